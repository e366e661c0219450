"""Named CKKS parameter presets, each checked against the 128-bit classical security bound.

The bound is the Homomorphic Encryption Standard's table (homomorphicencryption.org, 2018) for
ternary secrets at 128-bit classical security: the largest total coefficient-modulus size for a
ring dimension N. SEAL enforces the same table again when a context is created (never disabled).

| preset | N | modulus chain (bits) | total | levels | scale | slots | bootstrapping |
|---|---|---|---|---|---|---|---|
| ``test-small`` | 2^13 | 38, 30 x 4, 60 | 218 <= 218 | 4 | 2^30 | 4096 | no |
| ``test-medium`` | 2^14 | 60, 40 x 7, 60 | 400 <= 438 | 7 | 2^40 | 8192 | no |
| ``depth19`` | 2^15 | 60, 40 x 19, 60 | 880 <= 881 | 19 | 2^40 | 16384 | no |

These are SEAL's presets (no CKKS bootstrapping, no 2^16 ring). The bootstrapping parameters
are ``openfhe_backend.OpenFHEBackend``'s arguments, which OpenFHE checks against the same standard
itself; docs/nexus.md records how each choice was measured.

The last prime is SEAL's special (key-switching) prime and must be the largest: key-switching
noise grows with the largest chain prime over it (docs/nexus.md gives the rotation errors).

``levels`` counts the rescalings a fresh ciphertext allows (the chain minus its first and
special primes). ``depth19`` fits one SGN (depth 16) or the NEXUS GELU without bootstrapping.
"""

from __future__ import annotations

from dataclasses import dataclass

from privformer.errors import InsecureParametersError, UnknownNameError

# HE Standard, 128-bit classical, ternary secret: max log2(Q * P) by ring dimension.
MAX_MODULUS_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class Preset:
    """CKKS parameters: ring dimension, modulus chain in bits, scale in bits, bootstrapping."""

    name: str
    ring_dim: int
    modulus_bits: tuple[int, ...]
    scale_bits: int
    bootstrapping: bool = False
    description: str = ""

    @property
    def slots(self) -> int:
        return self.ring_dim // 2

    @property
    def levels(self) -> int:
        """Rescalings available to a fresh ciphertext (the first and special primes excluded)."""
        return len(self.modulus_bits) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.modulus_bits)

    def check_security(self) -> None:
        """Raise ``InsecureParametersError`` unless the preset meets 128-bit classical security."""
        limit = MAX_MODULUS_BITS_128.get(self.ring_dim)
        if limit is None:
            raise InsecureParametersError(
                f"preset {self.name!r}: no 128-bit bound known here for N={self.ring_dim}"
            )
        if self.total_bits > limit:
            raise InsecureParametersError(
                f"preset {self.name!r}: {self.total_bits}-bit modulus exceeds the {limit}-bit "
                f"bound for 128-bit security at N={self.ring_dim}"
            )


PRESETS: dict[str, Preset] = {
    "test-small": Preset(
        "test-small",
        1 << 13,
        (38, 30, 30, 30, 30, 60),
        30,
        description="fast tests: 4 levels, 4096 slots",
    ),
    "test-medium": Preset(
        "test-medium",
        1 << 14,
        (60, *([40] * 7), 60),
        40,
        description="tests of multi-level operators: 7 levels at 2^40, 8192 slots",
    ),
    "depth19": Preset(
        "depth19",
        1 << 15,
        (60, *([40] * 19), 60),
        40,
        description="one SGN (depth 16) or GELU without bootstrapping: 19 levels, 16384 slots",
    ),
}


def get_preset(name: str) -> Preset:
    """A preset by name, security-checked."""
    if name not in PRESETS:
        raise UnknownNameError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    preset.check_security()
    return preset
