"""NEXUS (NDSS 2025): non-interactive transformer inference under CKKS.

- ``matmul``: plaintext-weight x ciphertext matmul in the token-interleaved packing;
- ``attention``: ciphertext x ciphertext attention (scores in a diagonal layout, P V);
- ``he_nonlinear``: encrypted GELU, softmax, LayerNorm, argmax (recipes: ``privformer.approx``);
- ``layer``: one BERT encoder layer, encrypted and in float64 (plain or simulate);
- ``model``: the classifier (client embeddings, server layers and head) and its folders.
"""
