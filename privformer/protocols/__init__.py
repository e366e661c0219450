"""The private-inference protocols, each self-contained (they never import each other):
``stip`` (permutation obfuscation), ``nexus`` (CKKS, non-interactive), ``cipherprune`` (2PC with
encrypted token pruning). Each has its own artifact ``format`` module."""
