"""NEXUS (NDSS 2025): non-interactive transformer inference under CKKS. So far: the operators'
float64 ``simulate`` twins (``approx``) and their encrypted versions (``he_ops``)."""
