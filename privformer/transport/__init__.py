"""Transport: wire formats and the processes around the protocols.

- ``tensors``: the tensor payload format (safetensors with a checked header);
- ``stip_http`` / ``stip_server`` / ``stip_client``: STIP's HTTP app, server and client;
- ``cipherprune``: CipherPrune's dealer and server loops and the client's remote call;
- ``processes``: the one ready-file handshake every server process uses.

The 2PC engine's communicator (frames, counters) is ``privformer.crypto.mpc.channel``: the
engine's protocols exchange messages in every round, so it sits below them, as in CrypTen.
CKKS ciphertexts carry their checked envelope from ``privformer.crypto.ckks.backend``.
"""
