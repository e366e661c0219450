"""A small two-party secure-computation engine on torch (semi-honest, trusted dealer).

Additive secret sharing over the ring Z_{2^64} on int64 tensors, fixed point with ``FRAC_BITS``
fractional bits, correlated randomness (Beaver triples, bit triples, daBits, truncation pairs,
shuffle masks) from a dealer process that never sees inputs or weights. Modules:

- ``fixed``: the ring and fixed-point encoding;
- ``prg``: AES-CTR streams keyed from ``secrets`` (the CSPRNG every mask comes from);
- ``channel``: framed, versioned, length-checked messages with byte and round counters and an
  optional network model (latency, bandwidth);
- ``dealer``: the dealer process and the parties' side of it;
- ``party``: one party's connections, streams and statistics;
- ``shared``: the secret-shared tensor and its linear and Beaver protocols;
- ``approx``: the nonlinear approximations in float64 (the ``simulate`` twins);
- ``nonlinear``: the same approximations under 2PC (comparison, mux, exp, reciprocal, rsqrt,
  GELU, softmax, LayerNorm).
"""
