"""CKKS homomorphic encryption behind one interface.

- ``backend``: ``CKKSBackend`` (the operations circuits call), ``Ciphertext``, ``Bootstrapper``;
- ``presets``: SEAL's named parameter sets, checked against the 128-bit HE Standard bound;
- ``seal_backend``: SEAL through TenSEAL (no bootstrapping of its own);
- ``openfhe_backend`` + ``openfhe_worker``: OpenFHE with real bootstrapping, in a 3.10 worker;
- ``refresh``: ``SecretKeyRefresh``, a decrypt-and-re-encrypt bootstrapper for tests (insecure);
- ``circuits``: generic circuits (polynomials, Chebyshev series, SGN, QuickSum, QuickMax,
  ``ensure_level``);
- ``planner``: bootstrap placement over a chain of steps (a dynamic program over levels).
"""
