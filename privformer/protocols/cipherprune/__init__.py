"""CipherPrune (ICLR 2025): two-party BERT inference with encrypted token pruning and
polynomial reduction, on the engine in ``privformer.crypto.mpc``.

- ``model``: the BERT classifier's weights and the one forward pass both executors run;
- ``simulate``: the float executor (``plain`` exact functions, ``simulate`` the 2PC
  approximations), which also applies the pruning rule;
- ``nonlinear``: GELU, exp, softmax, 1/sqrt and LayerNorm under 2PC;
- ``secure``: the 2PC executor;
- ``compaction``: oblivious removal of pruned tokens (adjacent swaps, or shuffle-and-open);
- ``session``: what client and server compute in a session, and the in-process classifier;
- ``format``: the server's, client's and dealer's folders;
- ``train``: fine-tuning and crypto-aware threshold learning.
"""
