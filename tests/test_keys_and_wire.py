"""The key file and the wire format: round trips, and clear errors on every kind of damage."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from privformer.errors import KeyFormatError, KeyMismatchError, WireFormatError
from privformer.protocols.stip.cloud import StipCloud
from privformer.protocols.stip.keys import UserKey
from privformer.protocols.stip.permutations import random_permutation
from privformer.transport import tensors as wire


def _key(**overrides) -> UserKey:
    fields = dict(
        scheme="v2",
        family="llama",
        hidden_size=8,
        vocab_size=12,
        model_fingerprint="ab" * 32,
        pi=random_permutation(8),
        pi_c=random_permutation(12),
    )
    return UserKey(**{**fields, **overrides})


def test_key_round_trip(tmp_path):
    key = _key()
    key.save(tmp_path / "user.key")
    loaded = UserKey.load(tmp_path / "user.key")
    assert torch.equal(loaded.pi, key.pi) and torch.equal(loaded.pi_c, key.pi_c)
    assert (loaded.scheme, loaded.hidden_size, loaded.model_fingerprint) == ("v2", 8, "ab" * 32)
    x = torch.randn(3, 8)
    assert torch.equal(x[..., loaded.pi][..., loaded.pi_inverse], x)


def test_damaged_keys_are_refused(tmp_path):
    path = tmp_path / "user.key"
    with pytest.raises(KeyFormatError, match="not found"):
        UserKey.load(path)
    _key().save(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(KeyFormatError, match="not a readable key file"):
        UserKey.load(path)
    save_file({"pi": torch.arange(8)}, str(path), metadata={"format": "something-else"})
    with pytest.raises(KeyFormatError, match="not a privformer STIP key"):
        UserKey.load(path)
    _key(pi=torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])).save(path)
    with pytest.raises(KeyFormatError, match="pi is not a permutation"):
        UserKey.load(path)
    _key(pi_c=torch.arange(11)).save(path)
    with pytest.raises(KeyFormatError, match="pi_c is not a permutation"):
        UserKey.load(path)


def test_key_is_bound_to_its_model():
    key = _key()
    key.check_model("ab" * 32, 8, "v2")
    with pytest.raises(KeyMismatchError, match="belongs to model"):
        key.check_model("cd" * 32, 8, "v2")
    with pytest.raises(KeyMismatchError, match="hidden size"):
        key.check_model("ab" * 32, 16, "v2")


def test_wire_round_trip_and_version():
    tensors = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    decoded, meta = wire.decode(wire.encode(tensors, {"note": "x"}))
    assert torch.equal(decoded["a"], tensors["a"]) and torch.equal(decoded["b"], tensors["b"])
    assert meta == {"privformer-wire": "1", "note": "x"}


@pytest.mark.parametrize(
    "mangle,fragment",
    [
        (lambda b: b[:5], "shorter"),
        (lambda b: (10**9).to_bytes(8, "little") + b[8:], "runs past"),
        (lambda b: b[:-3], "malformed"),
        (lambda b: b[:8] + b"{" * (len(b) - 8), "not JSON"),
        (lambda b: b + b"\0" * 100, "malformed"),
    ],
)
def test_damaged_payloads_are_refused(mangle, fragment):
    with pytest.raises(WireFormatError, match=fragment):
        wire.decode(mangle(wire.encode({"x": torch.randn(4, 4)})))


def test_payload_size_limit():
    with pytest.raises(WireFormatError, match="exceeds the limit"):
        wire.decode(wire.encode({"x": torch.zeros(1000)}), max_bytes=1000)


def test_cloud_refuses_weights_changed_after_export(export_dir, tmp_path):
    import shutil

    cloud_dir = tmp_path / "cloud"
    shutil.copytree(export_dir("random:bert", "v1").cloud_dir, cloud_dir)
    StipCloud(cloud_dir)  # intact: loads
    manifest = json.loads((cloud_dir / "privformer.json").read_text())
    blob = bytearray((cloud_dir / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (cloud_dir / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(KeyFormatError, match="do not match the fingerprint"):
        StipCloud(cloud_dir)
    assert manifest["model_fingerprint"]  # the manifest is what the check compares against
