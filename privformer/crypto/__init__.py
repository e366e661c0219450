"""Cryptographic engines: ``ckks`` (CKKS homomorphic encryption: the backend interface, SEAL and
OpenFHE backends, presets, bootstrappers, generic circuits) and ``mpc`` (a two-party
secret-sharing engine with a dealer). The two never import each other."""
