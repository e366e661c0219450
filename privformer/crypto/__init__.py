"""CKKS homomorphic encryption behind a small backend interface (``backend``), named parameter
presets checked for 128-bit security (``presets``), and the SEAL backend (``seal_backend``)."""
