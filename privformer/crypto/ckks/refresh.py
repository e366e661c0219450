"""A secret-key "bootstrap" for tests and accuracy studies: NOT a secure protocol.

``SecretKeyRefresh`` refreshes a ciphertext by decrypting it, adding the error a real bootstrap
leaves (uniform noise of 2^-precision_bits times the largest slot magnitude) and re-encrypting
at the top level. It works with any backend, so circuits that need more levels than one chain
holds (the NEXUS softmax and LayerNorm) can be checked on SEAL, which has no CKKS
bootstrapping, and their bootstrap counts measured fast.

It needs the secret key in the evaluator's process, which a NEXUS server never has: it is a test
fixture, like CipherPrune's ``debug_reveal``, and nothing in the serving path accepts it. It also
checks every caller's stated bound (a real bootstrap cannot), raising ``BootstrapRangeError``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from privformer.crypto.ckks.backend import Bootstrapper, Ciphertext, CKKSBackend
from privformer.errors import BootstrapRangeError


class SecretKeyRefresh(Bootstrapper):
    """Decrypt, add bootstrap-sized noise, re-encrypt; counts the levels it gave back."""

    def __init__(
        self,
        precision_bits: float = 20.0,
        window: int | None = None,
        complex_packing: bool = False,
        pair_level_loss: int = 1,
        sparse_periods: Sequence[int] = (),
    ):
        """``window``: refreshed ciphertexts are dropped to this many levels (e.g. 7, what
        OpenFHE's default chain leaves after a real bootstrap); None: the backend's top.
        ``complex_packing``: pairs share a bootstrap and its error, which is relative to the
        larger of the two, and the second comes back ``pair_level_loss`` levels lower (as in
        one bootstrap of a + i b). ``sparse_periods``: periods counted as sparse-slot
        bootstraps (as a real backend with those keys would run them; the refresh is the same)."""
        super().__init__(sparse_periods)
        self.precision_bits, self.window = precision_bits, window
        self.complex_packing, self.pair_level_loss = complex_packing, pair_level_loss
        self.levels_spent = 0  # levels used up by refreshed ciphertexts (a level-cost counter)
        self._noise = np.random.default_rng(secrets.randbits(64))  # noise, not key material

    def refresh(
        self, backend: CKKSBackend, a: Ciphertext, bound: float, period: int | None = None
    ) -> Ciphertext:
        return self._refreshed(backend, [a], bound, period)[0]

    def check_period(self, backend: CKKSBackend, a: Ciphertext, period: int) -> None:
        """A sparse bootstrap of a vector that does not repeat with ``period`` returns the
        average of its repeats: refuse the promise unless the repeats differ by no more than
        noise. Earlier full refreshes put noise that does not repeat into every slot, and
        Newton's steps amplify it (measured 1.1e-3 of the peak at 20 bits), so the bar is
        2^(14 - precision_bits), at most 1%, of the peak (1e-6 when exact); a vector that truly
        does not repeat differs by the order of its peak."""
        values = backend.decrypt(a)
        if period < 1 or values.size % period:
            raise BootstrapRangeError(f"period {period} does not divide {values.size} slots")
        repeats = values.reshape(-1, period)
        spread = float(np.abs(repeats - repeats[0]).max())
        peak = max(1.0, float(np.abs(values).max()))
        if spread > max(1e-6, min(1e-2, 2.0 ** (14 - self.precision_bits))) * peak:
            raise BootstrapRangeError(
                f"a bootstrap input promised to repeat every {period} slots differs from its "
                f"first period by {spread:.3g} (largest slot {peak:.3g})"
            )

    def refresh_pair(
        self, backend: CKKSBackend, a: Ciphertext, b: Ciphertext, bound: float
    ) -> tuple[Ciphertext, Ciphertext]:
        fresh_a, fresh_b = self._refreshed(backend, [a, b], bound)
        top = self.window or backend.top
        return fresh_a, backend.drop_to(fresh_b, top - self.pair_level_loss)

    def _refreshed(
        self, backend: CKKSBackend, cts: list[Ciphertext], bound: float, period: int | None = None
    ) -> list[Ciphertext]:
        """Each of ``cts`` re-encrypted with noise relative to the largest slot of them all;
        with ``period`` (a sparse bootstrap), as a sparse bootstrap returns it: the average
        of the repeats, and noise that repeats too."""
        values = []
        for a in cts:
            self.levels_spent += (self.window or backend.top) - backend.levels_left(a)
            values.append(backend.decrypt(a))
        peak = max(float(np.abs(v).max()) for v in values)
        # Bounds are magnitudes, not walls: a real bootstrap degrades gradually past its range
        # (docs/nexus.md), so 25% headroom is allowed.
        if peak > 1.25 * bound:
            raise BootstrapRangeError(
                f"a bootstrap input reaches {peak:.6g}, beyond its stated bound {bound:g}"
            )
        amplitude = 2.0**-self.precision_bits * max(1.0, peak)
        out = []
        for v in values:
            if period is None:
                noisy = v + self._noise.uniform(-amplitude, amplitude, v.shape)
            else:
                repeats = v.reshape(-1, period)
                noise = self._noise.uniform(-amplitude, amplitude, period)
                noisy = np.tile(repeats.mean(axis=0) + noise, repeats.shape[0])
            fresh = backend.encrypt(noisy)
            out.append(fresh if self.window is None else backend.drop_to(fresh, self.window))
        return out
