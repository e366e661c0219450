"""Approximation recipes for the transformer nonlinearities, and their float twins.

One module per function; each holds the recipes of that function (polynomials, iteration
counts, valid input ranges) and a float evaluation of each that applies exactly the steps its
encrypted executors take, so ``simulate`` mode shows the private run's accuracy without its cost:

- ``ranges``: the range check every twin runs first (``OutOfRangeError`` names the operator);
- ``sign``: Cheon et al.'s composite sign polynomials, SGN and the smooth max built on it;
- ``chebyshev``: Chebyshev interpolants and the Paterson-Stockmeyer split;
- ``folds``: log-step rotate-and-sum / rotate-and-max over a power-of-two width;
- ``gelu``: NEXUS's piecewise GELU (``nexus``) and CipherPrune's |x|-polynomial (``cipherprune``);
- ``softmax``: NEXUS's max-subtracted (1 + z/2^r)^(2^r) with Goldschmidt (``nexus``) and
  CipherPrune's clamped Taylor-and-square exp with a Newton reciprocal (``cipherprune``);
- ``layernorm``: Newton's inverse square root from a linear start, both protocols' forms;
- ``argmax``: NEXUS's log-round QuickMax and one-hot mask.

Executors: ``privformer.crypto.ckks.circuits`` and ``privformer.protocols.nexus.he_nonlinear``
(CKKS), ``privformer.protocols.cipherprune.nonlinear`` (2PC). This layer imports only
``privformer.errors``, numpy and torch.
"""

from privformer.approx import argmax, chebyshev, folds, gelu, layernorm, ranges, sign, softmax

__all__ = ["argmax", "chebyshev", "folds", "gelu", "layernorm", "ranges", "sign", "softmax"]
