"""OpenFHE CKKS in a worker process: the server side of ``openfhe_backend.OpenFHEBackend``.

OpenFHE's Python binding installs here only for CPython 3.10 (see the README), while privformer
runs on 3.11, so this script runs under a 3.10 interpreter with ``openfhe`` and the standard
library only (no privformer, no numpy). It owns the context, the keys and every ciphertext;
the parent refers to ciphertexts by integer handles.

Wire format on stdin/stdout: 8-byte little-endian length, then a pickle of (method, args);
the reply is a pickle of ("ok", result) or ("err", message). Vectors travel as float64 bytes.
Scaling is FLEXIBLEAUTO: OpenFHE rescales before the next product, and ``level`` counts a
pending rescale as spent, so levels mean what the backend interface promises.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from array import array
from typing import Any

TECHNIQUE = "FLEXIBLEAUTO"
HIDDEN_LEVELS = 2


def _floats(data: bytes) -> list[float]:
    values = array("d")
    values.frombytes(data)
    return values.tolist()


def _bootstrap_depth(o: Any, chain: dict) -> int:
    dist = getattr(o.SecretKeyDist, chain["secret"])
    return o.CryptoContext.GetBootstrapDepth(list(chain["level_budget"]), dist)


def _parameters(o: Any, chain: dict, depth: int) -> Any:
    """CKKS parameters of ``chain`` (the backend's ``chain_parameters``) at ``depth``."""
    params = o.CCParamsCKKSRNS()
    params.SetSecurityLevel(o.SecurityLevel.HEStd_128_classic)  # never HEStd_NotSet
    params.SetSecretKeyDist(getattr(o.SecretKeyDist, chain["secret"]))
    params.SetScalingModSize(chain["scale_bits"])
    params.SetFirstModSize(chain["first_bits"])
    params.SetScalingTechnique(getattr(o.ScalingTechnique, TECHNIQUE))
    params.SetMultiplicativeDepth(depth)
    # More digits shrink the special modulus P, which is what lets the chain fit ring 2^16
    # at 128 bits; each key grows with the digit count.
    params.SetNumLargeDigits(chain["num_large_digits"])
    if chain["ring_dim"]:
        params.SetRingDim(chain["ring_dim"])
    if chain.get("slots"):
        params.SetBatchSize(chain["slots"])  # sparse packing: rotations cyclic over these
    if chain.get("complex_packing"):
        # A REAL context's bootstrap drops the imaginary part; a COMPLEX one keeps it, so
        # one bootstrap refreshes a + i b (measured: same time, same error for both halves).
        params.SetCKKSDataType(o.CKKSDataType.COMPLEX)
    return params


class _Keys:
    """A public key and, on the client, the secret key (OpenFHE's KeyPair has no constructor)."""

    def __init__(self, public: Any, secret: Any = None) -> None:
        self.publicKey, self.secretKey = public, secret


class Worker:
    def __init__(self) -> None:
        self.cts: dict[int, Any] = {}  # openfhe.Ciphertext (the binding has no stubs)
        self.next_id = 0

    # --- context -------------------------------------------------------------------------
    def _chain_state(self, levels: int, chain: dict, precision: int) -> None:
        """The chain: the levels operators get, two hidden ones (one to scale a bootstrap's
        input into range, one that EvalBootstrap's input needs), the bootstrap, and one per
        extra iteration of Meta-BTS (iterative bootstrapping)."""
        self.boot_depth = _bootstrap_depth(self.o, chain)
        self.iterations, self.precision = chain["iterations"], precision
        self.complex_packing = bool(chain.get("complex_packing"))
        # pair_level: one more level after each bootstrap, spent by every bootstrap's output
        # (a pair's second half on its -i), so both halves keep ``levels``.
        self.pair_level = 1 if chain.get("pair_level") else 0
        self.consumed_at_top = self.boot_depth + chain["iterations"] - 1 + self.pair_level
        self.depth = levels + HIDDEN_LEVELS + self.consumed_at_top

    def _info(self) -> dict:
        """What the parent learns of a context: ring, depth, bootstrap depth, slots, key tag."""
        return {
            "ring_dim": self.cc.GetRingDimension(),
            "depth": self.depth,
            "boot": self.boot_depth,
            "slots": self.slots,
            "key_tag": self.keys.publicKey.GetKeyTag(),
        }

    def setup(self, levels: int, chain: dict, precision: int):
        """Context, keys, bootstrapping keys for ``levels`` operator levels on ``chain``."""
        import openfhe as o

        self.o = o
        self._chain_state(levels, chain, precision)
        cc = o.GenCryptoContext(_parameters(o, chain, self.depth))
        for feature in ("PKE", "KEYSWITCH", "LEVELEDSHE", "ADVANCEDSHE", "FHE"):
            cc.Enable(getattr(o.PKESchemeFeature, feature))
        self.cc = cc
        self.slots = chain.get("slots") or cc.GetRingDimension() // 2
        self._bootstrap_setup(chain)
        self.keys = cc.KeyGen()
        cc.EvalMultKeyGen(self.keys.secretKey)
        for slots in [self.slots] + self.sparse_periods:
            cc.EvalBootstrapKeyGen(self.keys.secretKey, slots)
        return self._info()

    def _bootstrap_setup(self, chain: dict) -> None:
        """The bootstrap's linear maps (public precomputation, no key) for the full slots and
        each sparse period."""
        self.sparse_periods = [int(p) for p in chain.get("sparse_periods", [])]
        for slots in [self.slots] + self.sparse_periods:
            self.cc.EvalBootstrapSetup(list(chain["level_budget"]), [0, 0], slots)

    # --- keys across processes ------------------------------------------------------------
    # The client generates every key (``setup``) and exports what the server evaluates with;
    # the secret key goes to its own file and never into the server's folder.
    KEY_FILES = ("context.bin", "public_key.bin", "mult_key.bin", "automorphism_keys.bin")

    def export_keys(self, folder: str, secret_path: str) -> dict:
        """Evaluation keys (context, public, relinearisation, rotation and bootstrapping keys)
        into ``folder``, the secret key into ``secret_path``; returns each file's size."""
        o, cc = self.o, self.cc
        os.makedirs(folder, exist_ok=True)
        writers = {
            "context.bin": lambda p: o.SerializeToFile(p, cc, o.BINARY),
            "public_key.bin": lambda p: o.SerializeToFile(p, self.keys.publicKey, o.BINARY),
            "mult_key.bin": lambda p: cc.SerializeEvalMultKey(p, o.BINARY),
            "automorphism_keys.bin": lambda p: cc.SerializeEvalAutomorphismKey(p, o.BINARY),
        }
        sizes = {}
        for name, write in writers.items():
            path = os.path.join(folder, name)
            if not write(path):
                raise ValueError(f"OpenFHE could not write {name}")
            sizes[name] = os.path.getsize(path)
        if not o.SerializeToFile(secret_path, self.keys.secretKey, o.BINARY):
            raise ValueError("OpenFHE could not write the secret key")
        return sizes

    def load_keys(self, folder: str, levels: int, chain: dict, precision: int, secret: str):
        """A context from ``export_keys``' folder: the server's (evaluation keys, no secret key,
        ``secret`` empty) or the client's (``secret``: the secret key's path; no evaluation
        keys, so it only encrypts and decrypts)."""
        import openfhe as o

        self.o = o
        cc, ok = o.DeserializeCryptoContext(os.path.join(folder, "context.bin"), o.BINARY)
        if not ok:
            raise ValueError("not an OpenFHE context file")
        public, ok = o.DeserializePublicKey(os.path.join(folder, "public_key.bin"), o.BINARY)
        if not ok:
            raise ValueError("not an OpenFHE public key file")
        self.keys = _Keys(public)
        if secret:
            private, ok = o.DeserializePrivateKey(secret, o.BINARY)
            if not ok:
                raise ValueError("not an OpenFHE secret key file")
            if private.GetKeyTag() != public.GetKeyTag():
                raise ValueError("the secret key belongs to other evaluation keys")
            self.keys.secretKey = private
        else:
            for name, load in (
                ("mult_key.bin", cc.DeserializeEvalMultKey),
                ("automorphism_keys.bin", cc.DeserializeEvalAutomorphismKey),
            ):
                if not load(os.path.join(folder, name), o.BINARY):
                    raise ValueError(f"{name} is not an OpenFHE key file")
        self.cc = cc
        self._chain_state(levels, chain, precision)
        self.slots = chain.get("slots") or cc.GetRingDimension() // 2
        if not secret:
            self._bootstrap_setup(chain)
        return self._info()

    def max_levels(self, chain: dict, upper: int = 40) -> int:
        """The most operator levels whose chain OpenFHE accepts at 128 bits (contexts only, no
        keys: fast); 0 if none."""
        import openfhe as o

        consumed = _bootstrap_depth(o, chain) + chain["iterations"] - 1
        consumed += 1 if chain.get("pair_level") else 0

        def fits(levels: int) -> bool:
            try:
                cc = o.GenCryptoContext(_parameters(o, chain, levels + HIDDEN_LEVELS + consumed))
            except Exception:  # OpenFHE raises when the chain breaks the 128-bit bound
                return False
            return not chain["ring_dim"] or cc.GetRingDimension() == chain["ring_dim"]

        # Not a binary search: OpenFHE splits the chain's primes into digits by count, so the
        # special modulus (and with it the 128-bit check) is not monotone in the depth.
        return next((levels for levels in range(upper, 0, -1) if fits(levels)), 0)

    def rotation_keygen(self, steps):
        self.cc.EvalRotateKeyGen(self.keys.secretKey, [int(s) for s in steps])

    # --- handles -------------------------------------------------------------------------
    def _new(self, ct) -> int:
        self.next_id += 1
        self.cts[self.next_id] = ct
        return self.next_id

    def free(self, ids):
        for i in ids:
            self.cts.pop(i, None)

    def live(self) -> int:
        return len(self.cts)

    def level(self, a: int) -> int:
        """Rescalings left to the operators: the chain's, less the two hidden levels."""
        ct = self.cts[a]
        return self.depth - ct.GetLevel() - (ct.GetNoiseScaleDeg() - 1) - HIDDEN_LEVELS

    def _plain(self, data: bytes, consumed: int):
        return self.cc.MakeCKKSPackedPlaintext(_floats(data), 1, consumed, None, self.slots)

    def _aligned(self, a: int, b: int):
        x, y = self.cts[a], self.cts[b]
        if x.GetLevel() < y.GetLevel():
            x = self.cc.LevelReduce(x, None, y.GetLevel() - x.GetLevel())
        elif y.GetLevel() < x.GetLevel():
            y = self.cc.LevelReduce(y, None, x.GetLevel() - y.GetLevel())
        return x, y

    # --- operations ----------------------------------------------------------------------
    def encrypt(self, data: bytes) -> int:
        # Fresh ciphertexts get the levels a bootstrap leaves, so both look alike to operators.
        fresh = self._plain(data, self.consumed_at_top)
        return self._new(self.cc.Encrypt(self.keys.publicKey, fresh))

    def decrypt(self, a: int, length: int) -> bytes:
        if self.keys.secretKey is None:
            raise ValueError("this side holds no secret key: only the client decrypts")
        plain = self.cc.Decrypt(self.cts[a], self.keys.secretKey)
        plain.SetLength(length)
        return array("d", plain.GetRealPackedValue()).tobytes()

    def add(self, a: int, b: int) -> int:
        return self._new(self.cc.EvalAdd(*self._aligned(a, b)))

    def sub(self, a: int, b: int) -> int:
        return self._new(self.cc.EvalSub(*self._aligned(a, b)))

    def add_plain(self, a: int, scalar, data):
        ct = self.cts[a]
        if data is None:
            return self._new(self.cc.EvalAdd(ct, float(scalar)))
        return self._new(self.cc.EvalAdd(ct, self._plain(data, ct.GetLevel())))

    def multiply(self, a: int, b: int) -> int:
        return self._new(self._rescaled(self.cc.EvalMult(*self._aligned(a, b))))

    def multiply_plain(self, a: int, scalar, data):
        ct = self.cts[a]
        if data is None:
            return self._new(self._rescaled(self.cc.EvalMult(ct, float(scalar))))
        return self._new(self._rescaled(self.cc.EvalMult(ct, self._plain(data, ct.GetLevel()))))

    def _rescaled(self, ct):
        return self.cc.Rescale(ct) if TECHNIQUE == "FIXEDMANUAL" else ct

    def rotate(self, a: int, step: int) -> int:
        return self._new(self.cc.EvalRotate(self.cts[a], int(step)))

    def rotate_many(self, a: int, steps) -> list[int]:
        """Hoisted rotations: the key-switching decomposition of ``a`` is computed once and
        shared by every step (OpenFHE's EvalFastRotation)."""
        ct = self.cts[a]
        digits = self.cc.EvalFastRotationPrecompute(ct)
        order = self.cc.GetCyclotomicOrder()
        return [self._new(self.cc.EvalFastRotation(ct, int(s), order, digits)) for s in steps]

    def _eval_bootstrap(self, ct):
        if self.iterations == 1:
            return self.cc.EvalBootstrap(ct)
        return self.cc.EvalBootstrap(ct, self.iterations, self.precision)

    def _doubled(self, ct, times: int):
        for _ in range(times):
            ct = self.cc.EvalAdd(ct, ct)
        return ct

    def _constant(self, value: complex, level: int):
        return self.cc.MakeCKKSPackedPlaintext([value] * self.slots, 1, level, None, self.slots)

    def bootstrap(self, a: int, shift: int, period: int = 0) -> int:
        """Bootstrap x / 2^shift (the hidden level pays for the scaling), then double the
        result ``shift`` times, which costs no level and scales the error by 2^shift too.

        ``period`` (one of ``sparse_periods``): x repeats every ``period`` slots, so it is a
        sparse-packed ciphertext of that many slots and takes that sparse bootstrap; the
        result is full-slot again and brought to the level a full bootstrap leaves."""
        ct = self.cts[a]
        if period and period not in self.sparse_periods:
            raise ValueError(f"no sparse bootstrapping keys for period {period}")
        if shift:
            ct = self.cc.EvalMult(ct, 2.0**-shift)
        if period:
            ct = ct if shift else self.cc.EvalAdd(ct, 0.0)  # the handle's keeps its slots
            ct.SetSlots(period)
        ct = self._eval_bootstrap(ct)
        if period:
            ct.SetSlots(self.slots)
            # The level a full bootstrap's output counts as (tests/test_openfhe.py checks that
            # the sparse output has the same operator levels).
            top = self.consumed_at_top - self.pair_level
            if ct.GetLevel() < top:
                ct = self.cc.LevelReduce(ct, None, top - ct.GetLevel())
        if self.pair_level:  # spend it as a pair does: x 2^shift (LevelReduce is a no-op here)
            return self._new(self.cc.EvalMult(ct, 2.0**shift))
        return self._new(self._doubled(ct, shift))

    def bootstrap_pair(self, a: int, b: int, shift: int) -> list[int]:
        """One bootstrap for two real ciphertexts: z = (a + i b) / 2^(shift + 1) on the hidden
        level, bootstrapped; then a = (z + z*) doubled ``shift`` times (no level; on a
        ``pair_level`` chain times 2^shift, spending that level) and b = (z - z*) (-i 2^shift),
        a complex constant's product: b comes back one level lower (OpenFHE's Python binding has
        no free multiplication by i). z* is the conjugate
        (automorphism 2N - 1, whose key bootstrapping keys include at full slots)."""
        if not self.complex_packing:
            raise ValueError("a REAL context's bootstrap drops imaginary parts: complex_packing")
        x, y = self._aligned(a, b)
        scale = 2.0 ** -(shift + 1)
        i_scale = self._constant(1j * scale, y.GetLevel())
        z = self.cc.EvalAdd(self.cc.EvalMult(x, scale), self.cc.EvalMult(y, i_scale))
        z = self._eval_bootstrap(z)
        keys = self.cc.GetEvalAutomorphismKeyMap(self.keys.publicKey.GetKeyTag())
        conj = self.cc.EvalAutomorphism(z, self.cc.GetCyclotomicOrder() - 1, keys)
        real = self.cc.EvalAdd(z, conj)
        if self.pair_level:
            real = self.cc.EvalMult(real, 2.0**shift)
        else:
            real = self._doubled(real, shift)
        imag = self.cc.EvalMult(
            self.cc.EvalSub(z, conj), self._constant(-1j * 2.0**shift, z.GetLevel())
        )
        return [self._new(real), self._new(imag)]

    def serialize(self, a: int) -> bytes:
        return self.o.Serialize(self.cts[a], self.o.BINARY)

    def deserialize(self, body: bytes) -> int:
        ct = self.o.DeserializeCiphertextString(body, self.o.BINARY)
        if ct.GetKeyTag() != self.keys.publicKey.GetKeyTag():
            raise ValueError("the ciphertext was encrypted under another key")
        if ct.GetLevel() > self.depth:
            raise ValueError(
                f"ciphertext level {ct.GetLevel()} is beyond this chain's {self.depth}"
            )
        return self._new(ct)


def main() -> None:
    # Run by path, this script's folder is sys.path[0]; a module there named like the binding
    # (privformer's own backend modules sit beside it) must never shadow ``import openfhe``.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    worker = Worker()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(8)
        if len(head) < 8:
            return
        (size,) = struct.unpack("<Q", head)
        method, args = pickle.loads(stdin.read(size))
        try:
            reply = ("ok", getattr(worker, method)(*args))
        except Exception as exc:  # reported to the parent, which raises CryptoError
            reply = ("err", f"{type(exc).__name__}: {exc}")
        body = pickle.dumps(reply)
        stdout.write(struct.pack("<Q", len(body)) + body)
        stdout.flush()


if __name__ == "__main__":
    main()
