"""SEAL with a simulated bootstrap, for accuracy studies and tests only: NOT a secure protocol.

SEAL has no CKKS bootstrapping and OpenFHE, which has it, does not install here (README, "CKKS
backend"). The NEXUS operators still have to be checked across the bootstraps they need (the
softmax and LayerNorm of a real model need 30 to 40 levels; a 128-bit ring 2^15 gives 19), so
this backend stands in for bootstrapping by decrypting and re-encrypting at the top level.

That needs the secret key in the evaluator's process, which NEXUS's server never has: it is a
test fixture, like CipherPrune's ``debug_reveal``, and nothing in the serving path accepts it.
To keep the accuracy honest it adds the error a real bootstrap leaves: uniform noise of
2^-precision_bits times the largest slot magnitude (OpenFHE's CKKS bootstrapping keeps about 20
bits at ring 2^16 with 59-bit scaling primes; replace this with measurements once OpenFHE runs).
It also counts bootstraps, so benchmarks can price them at a measured bootstrap time.
"""

from __future__ import annotations

import secrets

import numpy as np

from privformer.crypto.backend import Ciphertext
from privformer.crypto.presets import Preset
from privformer.crypto.seal_backend import SealBackend
from privformer.errors import BootstrapRangeError


class DecryptRefreshBackend(SealBackend):
    """``SealBackend`` whose ``bootstrap`` decrypts, adds bootstrap-sized noise, re-encrypts."""

    def __init__(self, preset: Preset | str = "depth19", precision_bits: float = 20.0):
        super().__init__(preset)
        self.precision_bits = precision_bits
        self.bootstraps = 0
        self.levels_spent = 0  # levels used up by refreshed ciphertexts (a level-cost counter)
        self._noise = np.random.default_rng(secrets.randbits(64))  # noise, not key material

    def bootstrap(self, a: Ciphertext, bound: float = 1.0) -> Ciphertext:
        self.levels_spent += self.top - self.level(a)
        values = self.decrypt(a)
        peak = float(np.abs(values).max())
        # Bounds are magnitudes, not walls: a real bootstrap degrades gradually past its range
        # (OpenFHE: a constant 1 keeps 3.4e-7, 8 errs by 0.04), so 25% headroom is allowed.
        if peak > 1.25 * bound:
            raise BootstrapRangeError(
                f"a bootstrap input reaches {peak:.6g}, beyond its stated bound {bound:g}"
            )
        amplitude = 2.0**-self.precision_bits * max(1.0, peak)
        values = values + self._noise.uniform(-amplitude, amplitude, values.shape)
        self.bootstraps += 1
        return self.encrypt(values)
