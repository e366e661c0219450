"""CipherPrune (ICLR 2025): two-party BERT inference with encrypted token pruning and
polynomial reduction, on the engine in ``privformer.crypto.mpc``.

- ``model``: the BERT classifier's weights and the one forward pass both executors run;
- ``simulate``: the float executor (``plain`` exact functions, ``simulate`` the 2PC
  approximations), which also applies the pruning rule;
- ``secure``: the 2PC executor;
- ``compaction``: oblivious removal of pruned tokens (adjacent swaps, or shuffle-and-open);
- ``train``: fine-tuning and crypto-aware threshold learning;
- ``parties``: the client, server and dealer processes.
"""
