"""A small two-party secure-computation engine on torch (semi-honest, trusted dealer).

Additive secret sharing over the ring Z_{2^64} on int64 tensors, fixed point with ``FRAC_BITS``
fractional bits, correlated randomness (Beaver triples, bit triples, daBits, truncation pairs,
shuffle masks) from a dealer process that never sees inputs or weights. Modules, lowest first:

- ``fixed``: the ring and fixed-point encoding;
- ``prg``: AES-CTR streams keyed from ``secrets`` (the CSPRNG every mask comes from);
- ``channel``: the communicator: framed, versioned, length-checked messages with byte and round
  counters and an optional network model (latency, bandwidth);
- ``dealer``: the dealer and the parties' side of it;
- ``party``: one party's connections, streams and statistics;
- ``shared``: the secret-shared tensor and its linear and Beaver protocols;
- ``compare``: comparison (the sign bit), selection and the maximum.

The transformer nonlinearities built on it are CipherPrune's
(``privformer.protocols.cipherprune.nonlinear``); their float twins are in ``privformer.approx``.
"""
