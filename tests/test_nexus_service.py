"""NEXUS's client and server as separate processes over HTTP, on SEAL (fast; no bootstrapping).

The server (``privformer nexus serve``) runs ``minilm2-rt`` cut to its head (``--layers 0``):
the circuit is then one plaintext matmul and a mask, 2 levels, which SEAL's ``test-small``
preset holds without bootstrapping. That exercises everything the full model's query does
across processes: the spec, key generation from it, the key upload and its id, packing and
encryption, the server's evaluation under the uploaded keys, the reply, decryption. With no
layers [CLS]'s logits do not depend on the text, so the text path itself is held to ``simulate``
by the FloatBackend tests (test_nexus_depth.py) and end to end by the OpenFHE tests.

Tolerance: test-small encodes at 2^30; a product of 384 terms then carries ~1e-6 of absolute
error (measured 4e-6 at test-medium's 2^40 with its larger slots), so 1e-4 against float64 plain
logits of magnitude ~0.2 fails for any wrong slot, key or scale (errors of O(0.01) or more).

Refusals: every one names the problem with its 4xx status, and the same server answers a
correct query right after.
"""

from __future__ import annotations

import numpy as np
import pytest

import privformer as pf
from privformer.crypto.ckks.keys import key_set_id
from privformer.errors import ServerError, WireFormatError
from privformer.protocols.nexus import service as svc
from privformer.transport.nexus_http import NexusHttpClient, NexusServerProcess

MODEL = "minilm2-rt"
TEXTS = ["a gripping, beautifully acted film", "a dull, lifeless mess"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A running server, a client with uploaded keys, and the 0-layer plain reference."""
    import dataclasses

    root = tmp_path_factory.mktemp("nexus-service")
    options = ["--backend", "seal", "--preset", "test-small", "--layers", "0"]
    options += ["--keys-dir", str(root / "registry")]
    with NexusServerProcess(MODEL, options=options, log_file=root / "server.log") as server:
        http = NexusHttpClient(server.url, timeout_s=120)
        spec = http.spec()
        loaded = pf.load(MODEL, protocol="nexus")
        c = loaded.classifier
        client = svc.NexusClient(c.tables, loaded.tokenizer, spec, c.tokens, c.pad_id)
        svc.NexusClient.make_keys(spec, root / "keys")
        key_id = http.upload_keys(root / "keys" / svc.NexusClient.EVAL_DIR)
        assert client.open_keys(root / "keys") == key_id
        head_only = dataclasses.replace(c, layers=[], configs=[])
        yield {"http": http, "client": client, "spec": spec, "root": root, "plain": head_only}
        http.close()


def _query(dep, text: str, output: str = "logits") -> svc.Reply:
    client = dep["client"]
    return client.read_reply(dep["http"].classify(client.request(text, output=output)))


def _refused(dep, body: bytes, status: int, match: str) -> None:
    with pytest.raises(ServerError, match=match) as info:
        dep["http"].classify(body)
    assert info.value.status_code == status


def test_spec_states_parameters_layout_and_rotations(deployment):
    spec = deployment["spec"]
    assert spec["parameters"] == {"backend": "seal", "preset": "test-small"}
    assert spec["slots"] == 4096 and spec["tokens"] == 128 and spec["hidden"] == 384
    assert spec["blocks"] == 384 // (4096 // 128) and spec["classes"] == 2
    assert spec["layers"] == 0 and spec["rotation_steps"]


def test_encrypted_query_through_the_server_matches_plain(deployment):
    tok = deployment["client"].tokenizer
    for text in TEXTS:
        reply = _query(deployment, text)
        want = deployment["plain"].logits(tok(text)["input_ids"], "plain")
        assert np.abs(reply.scores - want).max() <= 1e-4, (reply.scores, want)
        assert reply.label == int(np.argmax(want)) and reply.bootstraps == 0


def test_key_id_is_the_public_keys_digest(deployment):
    eval_dir = deployment["root"] / "keys" / svc.NexusClient.EVAL_DIR
    assert deployment["client"].key_id == key_set_id(eval_dir)
    assert not (eval_dir / svc.NexusClient.SECRET_FILE).exists()  # the secret stays apart
    assert (deployment["root"] / "keys" / svc.NexusClient.SECRET_FILE).is_file()
    # uploading the same keys again names the registered set and keeps it serving
    assert deployment["http"].upload_keys(eval_dir) == deployment["client"].key_id
    assert deployment["http"].has_keys(deployment["client"].key_id)
    assert _query(deployment, TEXTS[0]).scores.shape == (2,)


def test_unknown_key_id_is_404(deployment):
    client = deployment["client"]
    real_id = client.key_id
    try:
        client.key_id = "0" * 64
        _refused(deployment, client.request(TEXTS[0]), 404, "UnknownKeyError")
        client.key_id = "../../etc"
        _refused(deployment, client.request(TEXTS[0]), 404, "not a key id")
    finally:
        client.key_id = real_id
    assert _query(deployment, TEXTS[0]).scores.shape == (2,)


def test_corrupted_ciphertext_and_malformed_messages_are_400(deployment):
    request = deployment["client"].request(TEXTS[0])
    bad = bytearray(request)
    bad[len(bad) // 2] ^= 0x08  # inside a ciphertext's body: its checksum fails
    _refused(deployment, bytes(bad), 400, "checksum")
    _refused(deployment, request[: len(request) // 3], 400, "truncated")
    _refused(deployment, b"GET / HTTP/1.0", 400, "not a NEXUS message")
    _refused(deployment, request + b"x", 400, "trailing")
    assert _query(deployment, TEXTS[1]).scores.shape == (2,)


def test_bad_values_are_422(deployment):
    client = deployment["client"]
    header, blobs = svc.decode_message(client.request(TEXTS[0]), svc.REQUEST_MAGIC, 64)
    for change, match in (
        ({"real_tokens": 0}, "real_tokens"),
        ({"real_tokens": 129}, "real_tokens"),
        ({"output": "probabilities"}, "output"),
    ):
        body = svc.encode_message(svc.REQUEST_MAGIC, {**header, **change}, blobs)
        _refused(deployment, body, 422, match)
    fewer = svc.encode_message(svc.REQUEST_MAGIC, header, blobs[:-1])
    _refused(deployment, fewer, 422, "ciphertexts; this model takes")
    # NEXUS's argmax needs bootstrapping: SEAL says so instead of computing garbage
    body = svc.encode_message(svc.REQUEST_MAGIC, {**header, "output": "argmax"}, blobs)
    _refused(deployment, body, 422, "BootstrapUnavailableError")
    assert _query(deployment, TEXTS[0]).scores.shape == (2,)


def test_ciphertexts_of_other_keys_are_refused(deployment, tmp_path):
    """A second client's keys, uploaded and valid, do not open the first client's key id."""
    dep = deployment
    svc.NexusClient.make_keys(dep["spec"], tmp_path / "other")
    other_id = dep["http"].upload_keys(tmp_path / "other" / svc.NexusClient.EVAL_DIR)
    assert other_id != dep["client"].key_id
    mine = svc.decode_message(dep["client"].request(TEXTS[0]), svc.REQUEST_MAGIC, 64)
    header, blobs = mine
    body = svc.encode_message(svc.REQUEST_MAGIC, {**header, "key_id": other_id}, blobs)
    _refused(dep, body, 422, "ContextMismatchError")
    assert _query(dep, TEXTS[0]).scores.shape == (2,)


def test_keys_for_other_parameters_or_missing_rotations_are_422(deployment, tmp_path):
    dep = deployment
    other = {**dep["spec"], "parameters": {"backend": "seal", "preset": "test-medium"}}
    svc.NexusClient.make_keys(other, tmp_path / "medium")
    with pytest.raises(ServerError, match="KeyMismatchError.*test-medium") as info:
        dep["http"].upload_keys(tmp_path / "medium" / svc.NexusClient.EVAL_DIR)
    assert info.value.status_code == 422
    few = {**dep["spec"], "rotation_steps": dep["spec"]["rotation_steps"][:1]}
    svc.NexusClient.make_keys(few, tmp_path / "few")
    with pytest.raises(ServerError, match="lack .* rotation steps") as info:
        dep["http"].upload_keys(tmp_path / "few" / svc.NexusClient.EVAL_DIR)
    assert info.value.status_code == 422
    # a damaged key file of a new key set is refused when loaded, not at the first query
    svc.NexusClient.make_keys(dep["spec"], tmp_path / "new")
    broken = tmp_path / "new" / svc.NexusClient.EVAL_DIR
    (broken / "relin_keys.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ServerError, match="relin_keys.bin") as info:
        dep["http"].upload_keys(broken)
    assert info.value.status_code == 422
    assert _query(dep, TEXTS[1]).scores.shape == (2,)


def test_decode_message_refuses_every_truncation():
    body = svc.encode_message(svc.REQUEST_MAGIC, {"key_id": "k"}, [b"abc", b"", b"defgh"])
    header, blobs = svc.decode_message(body, svc.REQUEST_MAGIC, 4)
    assert header == {"key_id": "k"} and blobs == [b"abc", b"", b"defgh"]
    for cut in range(len(body)):
        with pytest.raises(WireFormatError):
            svc.decode_message(body[:cut], svc.REQUEST_MAGIC, 4)
    with pytest.raises(WireFormatError, match="at most 2"):
        svc.decode_message(body, svc.REQUEST_MAGIC, 2)


def test_the_servers_progress_prints_each_stage_with_its_seconds(capsys):
    """Long encrypted runs leave one line per stage (seconds, bootstraps so far) in the log."""
    from privformer.cli.nexus import stage_printer

    progress = stage_printer(2)
    progress(0, "Q, K, V projections", 0, 12.5)
    progress(0, "Q K^T", 3, 20.0)
    progress(0, "Q, K, V projections", 0, 4.0)  # the next query starts a new bar
    err = capsys.readouterr()
    lines = [line for line in (err.out + err.err).splitlines() if line.startswith("layer")]
    assert lines == [
        "layer 0 Q, K, V projections: 12.5 s, 0 bootstraps so far",
        "layer 0 Q K^T: 7.5 s, 3 bootstraps so far",
        "layer 0 Q, K, V projections: 4.0 s, 0 bootstraps so far",
    ]
