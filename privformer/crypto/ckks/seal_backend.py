"""CKKS on Microsoft SEAL (through TenSEAL's ``sealapi`` bindings, Apache-2.0).

The fast backend of the default tests (it runs in this interpreter; OpenFHE runs in a CPython
3.10 worker). SEAL has no CKKS bootstrapping: ``bootstrap`` raises unless the backend was given
a ``Bootstrapper`` (``refresh.SecretKeyRefresh`` in tests).

Scale management is exact: every ciphertext at level l carries the canonical scale S_l, with
S_top = 2^scale_bits and S_{l-1} = S_l^2 / q_l (q_l the prime a rescale at level l divides
out). A ct x ct product of two level-l ciphertexts lands exactly on S_{l-1}; plaintexts are
encoded at S_{l-1} q_l / S_l so a plaintext product does too; dropping a level is a product
with an encoded 1. So ciphertexts that reach a level by different paths add without the usual
"set the scale and hope" error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from privformer.crypto.ckks.backend import Bootstrapper, Ciphertext, CKKSBackend
from privformer.crypto.ckks.presets import Preset, get_preset
from privformer.errors import (
    CiphertextFormatError,
    CryptoError,
    InputError,
    InsecureParametersError,
    LevelError,
)


class SealBackend(CKKSBackend):
    """A CKKS context with keys (public, secret, relinearisation, requested rotations)."""

    def __init__(
        self, preset: Preset | str = "test-small", bootstrapper: Bootstrapper | None = None
    ):
        """``bootstrapper``: SEAL has no CKKS bootstrapping, so None (bootstrap raises) or
        ``SecretKeyRefresh`` for tests and accuracy studies."""
        self.bootstrapper = bootstrapper
        self._build_context(get_preset(preset) if isinstance(preset, str) else preset)
        keygen = seal.KeyGenerator(self.context)
        public = seal.PublicKey()
        keygen.create_public_key(public)
        self._relin = seal.RelinKeys()
        keygen.create_relin_keys(self._relin)
        self._keygen: Any = keygen  # sealapi has no type stubs
        self._use_keys(public, keygen.secret_key())

    def _build_context(self, preset: Preset) -> None:
        """SEAL's context of ``preset`` (128-bit checked twice), its levels and exact scales."""
        self.preset: Preset = preset
        self.preset.check_security()
        n = self.preset.ring_dim
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(n)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(n, list(self.preset.modulus_bits)))
        # SEAL checks the HE Standard's 128-bit bound again here; we never pass NONE.
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise InsecureParametersError(
                f"SEAL refused preset {self.preset.name!r}: "
                f"{self.context.parameter_error_message()}"
            )
        data = self.context.first_context_data()
        self._parms: dict[int, object] = {}
        self._prime: dict[int, float] = {}
        while data is not None:
            level = data.chain_index()
            self._parms[level] = data.parms_id()
            self._prime[level] = float(data.parms().coeff_modulus()[-1].value())
            data = data.next_context_data()
        self.top = max(self._parms)
        self._scale = {self.top: float(2**self.preset.scale_bits)}
        for level in range(self.top, 0, -1):
            self._scale[level - 1] = self._scale[level] ** 2 / self._prime[level]
        self._galois: Any = None
        self._galois_steps: set[int] = set()
        self.encoder = seal.CKKSEncoder(self.context)
        self.evaluator = seal.Evaluator(self.context)

    def _use_keys(self, public, secret) -> None:
        """Encrypt under ``public``; decrypt with ``secret`` (None: a server, which cannot).
        The context id is derived from the public key, so the client's and the server's
        processes agree on it and refuse other keys' ciphertexts."""
        self._public, self._secret = public, secret
        self.encryptor = seal.Encryptor(self.context, public)
        self.decryptor = None if secret is None else seal.Decryptor(self.context, secret)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "public_key.bin")
            public.save(path)
            with open(path, "rb") as f:
                self.context_id = hashlib.sha256(f.read()).digest()[:8].hex()

    # --- keys across processes ------------------------------------------------------------------
    def export_keys(self, folder: str | Path, secret_path: str | Path) -> dict[str, int]:
        """The evaluation keys (public, relinearisation, rotations) and ``keys.json`` into
        ``folder``, the secret key to ``secret_path``; returns each key file's size."""
        if self._secret is None:
            raise CryptoError("only the backend that generated the keys can export them")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._public.save(str(folder / "public_key.bin"))
        self._relin.save(str(folder / "relin_keys.bin"))
        if self._galois is not None:
            self._galois.save(str(folder / "galois_keys.bin"))
        self._secret.save(str(secret_path))
        sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.suffix == ".bin"}
        manifest = {
            "backend": "seal",
            "preset": self.preset.name,
            "rotation_keys": sorted(self._galois_steps),
            "key_bytes": sizes,
        }
        (folder / "keys.json").write_text(json.dumps(manifest, indent=1))
        return sizes

    @classmethod
    def from_keys(cls, folder: str | Path, secret_path: str | Path | None = None) -> SealBackend:
        """A backend from ``export_keys``' folder: without ``secret_path`` the server's
        (evaluates, cannot decrypt), with it the client's."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / "keys.json").read_text())
            preset = get_preset(str(manifest["preset"]))
            steps = {int(s) for s in manifest.get("rotation_keys", [])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CryptoError(f"{folder} holds no SEAL key set (keys.json): {exc}") from exc
        backend = cls.__new__(cls)
        backend.bootstrapper = None
        backend._build_context(preset)
        backend._keygen = None

        def load(kind, path: Path):
            key = kind()
            try:
                key.load(backend.context, str(path))
            except Exception as exc:  # sealapi raises RuntimeError/ValueError on bad files
                raise CryptoError(f"{path.name} is not a SEAL key of this preset: {exc}") from exc
            return key

        public = load(seal.PublicKey, folder / "public_key.bin")
        backend._relin = load(seal.RelinKeys, folder / "relin_keys.bin")
        if steps:
            backend._galois = load(seal.GaloisKeys, folder / "galois_keys.bin")
            backend._galois_steps = steps
        secret = None if secret_path is None else load(seal.SecretKey, Path(secret_path))
        backend._use_keys(public, secret)
        return backend

    # --- keys ----------------------------------------------------------------------------------
    def generate_rotation_keys(self, steps: Sequence[int]) -> None:
        wanted = self._galois_steps | {int(s) % self.slots for s in steps if int(s) % self.slots}
        if wanted == self._galois_steps:
            return
        if self._keygen is None:
            missing = sorted(wanted - self._galois_steps)
            raise CryptoError(f"no rotation keys for steps {missing}: only the client makes keys")
        galois = seal.GaloisKeys()
        # SEAL wants Galois elements: a left rotation by k slots is the automorphism X -> X^(3^k).
        modulus = 2 * self.preset.ring_dim
        self._keygen.create_galois_keys([pow(3, step, modulus) for step in sorted(wanted)], galois)
        self._galois, self._galois_steps = galois, wanted

    # --- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _out(method, *args):
        """Call a sealapi evaluator method that writes into a destination ciphertext."""
        dest = seal.Ciphertext()
        method(*args, dest)
        return dest

    def _level_of(self, handle) -> int:
        return self.context.get_context_data(handle.parms_id()).chain_index()

    def _encode(self, values: np.ndarray | float, level: int, scale: float):
        arr = self._plain_values(values)
        plain = seal.Plaintext()
        if arr.size == 1:
            # A constant in every slot: SEAL's scalar encoding skips the FFT (80x faster).
            self.encoder.encode(float(arr[0]), self._parms[level], scale, plain)
            return plain
        vec = np.zeros(self.slots)
        vec[: arr.size] = arr
        self.encoder.encode(vec.tolist(), self._parms[level], scale, plain)
        return plain

    def _align(self, a: Ciphertext, b: Ciphertext) -> tuple[Ciphertext, Ciphertext]:
        self._own(a, b)
        level = min(self.levels_left(a), self.levels_left(b))
        return self.drop_to(a, level), self.drop_to(b, level)

    def _rescaled(self, handle, level: int, length: int) -> Ciphertext:
        self.evaluator.rescale_to_next_inplace(handle)
        handle.scale = self._scale[level - 1]  # equal up to float rounding by construction
        return self._wrap(handle, length)

    # --- encoding and encryption ---------------------------------------------------------------
    def encrypt(self, values: np.ndarray) -> Ciphertext:
        arr = self._encryptable(values)
        handle = seal.Ciphertext()
        self.encryptor.encrypt(self._encode(arr, self.top, self._scale[self.top]), handle)
        return self._wrap(handle, arr.size)

    def decrypt(self, ct: Ciphertext) -> np.ndarray:
        self._own(ct)
        if self.decryptor is None:
            raise CryptoError("this side holds no secret key: only the client decrypts")
        plain = seal.Plaintext()
        self.decryptor.decrypt(ct.handle, plain)
        return np.asarray(self.encoder.decode_double(plain))[: ct.length]

    # --- arithmetic ----------------------------------------------------------------------------
    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        a, b = self._align(a, b)
        return self._wrap(
            self._out(self.evaluator.add, a.handle, b.handle), max(a.length, b.length)
        )

    def sub(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        a, b = self._align(a, b)
        return self._wrap(
            self._out(self.evaluator.sub, a.handle, b.handle), max(a.length, b.length)
        )

    def add_plain(self, a: Ciphertext, values: np.ndarray | float) -> Ciphertext:
        self._own(a)
        level = self.levels_left(a)
        plain = self._encode(values, level, self._scale[level])
        length = max(a.length, np.size(values))  # a vector may fill slots beyond a's values
        return self._wrap(self._out(self.evaluator.add_plain, a.handle, plain), length)

    def multiply(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        a, b = self._align(a, b)
        level = self._need_level(a, "multiply")
        handle = self._out(self.evaluator.multiply, a.handle, b.handle)
        self.evaluator.relinearize_inplace(handle, self._relin)
        return self._rescaled(handle, level, max(a.length, b.length))

    def multiply_plain(self, a: Ciphertext, values: np.ndarray | float) -> Ciphertext:
        self._own(a)
        level = self._need_level(a, "multiply_plain")
        scale = self._scale[level - 1] * self._prime[level] / self._scale[level]
        handle = self._out(
            self.evaluator.multiply_plain, a.handle, self._encode(values, level, scale)
        )
        return self._rescaled(handle, level, a.length)

    def multiply_plain_sum(self, terms) -> Ciphertext:
        """Products accumulated at the doubled scale, then one rescale (not one per term)."""
        terms = list(terms)
        if not terms:
            raise InputError("multiply_plain_sum needs at least one term")
        level = min(self.levels_left(ct) for ct, _ in terms)
        if level < 1:
            raise LevelError("multiply_plain_sum: a ciphertext is at level 0")
        scale = self._scale[level - 1] * self._prime[level] / self._scale[level]
        acc = None
        length = 0
        for ct, values in terms:
            ct = self.drop_to(ct, level)
            length = max(length, ct.length)
            prod = self._out(
                self.evaluator.multiply_plain, ct.handle, self._encode(values, level, scale)
            )
            if acc is None:
                acc = prod
            else:
                self.evaluator.add_inplace(acc, prod)
        return self._rescaled(acc, level, length)

    @property
    def rotation_keys(self) -> frozenset[int]:
        return frozenset(self._galois_steps)

    def rotate(self, a: Ciphertext, steps: int) -> Ciphertext:
        step = self._rotation_step(a, steps)
        if step == 0:
            return a
        handle = seal.Ciphertext()
        self.evaluator.rotate_vector(a.handle, step, self._galois, handle)
        return self._wrap(handle, self.slots)  # values may wrap around to any slot

    def levels_left(self, a: Ciphertext) -> int:
        self._own(a)
        return self._level_of(a.handle)

    # --- serialization -------------------------------------------------------------------------
    def serialize(self, a: Ciphertext) -> bytes:
        self._own(a)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ct")
            a.handle.save(path)
            body = open(path, "rb").read()  # noqa: SIM115
        return self._envelope(a, body)

    def deserialize(self, data: bytes, length: int | None = None) -> Ciphertext:
        body, stored_length = self._open_envelope(data)
        handle = seal.Ciphertext()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ct")
            with open(path, "wb") as fh:
                fh.write(body)
            try:
                handle.load(self.context, path)
            except Exception as exc:  # SEAL reports invalid data as generic exceptions
                raise CiphertextFormatError(f"SEAL rejected the ciphertext: {exc}") from exc
        return self._wrap(handle, stored_length if length is None else length)
