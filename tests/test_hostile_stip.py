"""STIP's server, client and exporter under hostile and careless use (issue: no crash, no
unbounded memory, no silent wrong answer).

Every test asserts the documented refusal (status and message) and then that a correct request
right after still gets the correct answer from the same, still-running server.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psutil
import pytest
import torch

from privformer.errors import ModelNotFoundError, WireFormatError
from privformer.protocols.stip.cloud import _cache_bytes_per_position
from privformer.protocols.stip.export import export
from privformer.protocols.stip.user import StipUser
from privformer.transport import tensors as wire
from privformer.transport.stip_client import StipClient
from privformer.transport.stip_server import ServerProcess

DECODER = "random:llama-gqa"  # 64 wide, 256 positions: loads in a second
HIDDEN = 64


def _post(url: str, path: str, body, **kw) -> httpx.Response:
    return httpx.post(url + path, content=body, timeout=60, **kw)


def _step(url: str, sid: str, embeds: torch.Tensor, seq: int) -> httpx.Response:
    body = wire.encode({"inputs_embeds": embeds})
    return _post(url, f"/v1/sessions/{sid}/step", body, params={"seq": seq})


def _forward_ok(url: str, hidden: int) -> None:
    good = _post(url, "/v1/forward", wire.encode({"inputs_embeds": torch.randn(1, 4, hidden)}))
    assert good.status_code == 200, good.text
    (tensor,) = wire.decode(good.content)[0].values()
    assert tensor.shape[:2] == (1, 4) and torch.isfinite(tensor).all()


@pytest.fixture(scope="module")
def strict_server(export_dir, tmp_path_factory):
    """A decoder server with tight limits, so each one is reached in a fraction of a second."""
    cloud = export_dir(DECODER, "v2").cloud_dir
    per_position = _cache_bytes_per_position(json.loads((cloud / "config.json").read_text()))
    options = ["--max-sessions-per-client", "2", "--session-ttl", "2"]
    options += ["--max-cache-bytes", str(100 * per_position), "--request-timeout", "2"]
    options += ["--max-connections", "8", "--max-body-bytes", str(4 << 20)]
    log = tmp_path_factory.mktemp("strict") / "server.log"
    with ServerProcess(cloud, options=options, log_file=log) as server:
        yield server


def test_amplifying_forward_is_capped_and_top_k_is_offered(server_for):
    """SmolLM2 v2 returns logits: 400 positions x 49,152 x 4 B = 78.6 MB from a 0.9 MB request."""
    url = server_for("smollm2", "v2").url
    embeds = torch.randn(1, 400, 576)
    big = _post(url, "/v1/forward", wire.encode({"inputs_embeds": embeds}))
    assert big.status_code == 413 and "top_k" in big.json()["detail"], big.text
    wide = _post(url, "/v1/forward", wire.encode({"inputs_embeds": torch.randn(9, 500, 576)}))
    assert wide.status_code in (413, 422) and "4096" in wide.json()["detail"], wide.text
    top = _post(url, "/v1/forward", wire.encode({"inputs_embeds": embeds}), params={"top_k": 5})
    assert top.status_code == 200
    tensors = wire.decode(top.content)[0]
    assert tensors["top_indices"].shape == (1, 400, 5) and len(top.content) < 100_000
    _forward_ok(url, 576)


def test_a_chunked_oversized_upload_is_refused_while_reading(strict_server):
    url = strict_server.url
    server = psutil.Process(strict_server.proc.pid)
    before = server.memory_info().rss

    def chunks():
        block = b"\0" * (1 << 20)
        for _ in range(64):  # 64 MiB without a Content-Length; the limit here is 4 MiB
            yield block

    response = httpx.post(url + "/v1/forward", content=chunks(), timeout=60)
    assert response.status_code == 413 and "while being read" in response.json()["detail"]
    assert server.memory_info().rss - before < 48 << 20  # it never held the whole upload
    _forward_ok(url, HIDDEN)


def test_malformed_bodies_and_parameters_get_client_errors(server_for):
    url = server_for("minilm", "v2").url
    from safetensors.torch import save

    odd_meta = bytearray(save({"x": torch.zeros(1)}, metadata={"privformer-wire": "1"}))
    header_len = int.from_bytes(odd_meta[:8], "little")
    header = json.loads(odd_meta[8 : 8 + header_len])
    header["__metadata__"] = ["not", "an", "object"]
    text = json.dumps(header).encode()
    body = len(text).to_bytes(8, "little") + text + bytes(odd_meta[8 + header_len :])
    response = _post(url, "/v1/forward", body)
    assert response.status_code == 400 and "__metadata__" in response.json()["detail"]
    empty = _post(url, "/v1/forward", wire.encode({"inputs_embeds": torch.zeros(0, 4, 384)}))
    assert empty.status_code == 422 and "no tokens" in empty.json()["detail"]
    bad_k = _post(
        url,
        "/v1/forward",
        wire.encode({"inputs_embeds": torch.randn(1, 4, 384)}),
        params={"top_k": "x"},
    )
    assert bad_k.status_code == 422 and set(bad_k.json()) == {"error", "detail"}
    _forward_ok(url, 384)


def test_an_idle_connection_neither_blocks_nor_stays(strict_server):
    url = strict_server.url
    host, port = url.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)), timeout=30)
    idle.sendall(b"POST /v1/forward HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    start = time.monotonic()
    _forward_ok(url, HIDDEN)
    assert time.monotonic() - start < 10
    assert idle.recv(100) == b""  # closed by the server after its 2 s request timeout
    assert time.monotonic() - start < 10
    idle.close()


def test_connections_beyond_the_cap_get_503_and_the_server_recovers(strict_server):
    url = strict_server.url
    host, port = url.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port)), timeout=30) for _ in range(12)]
    for sock in held:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # unfinished
    time.sleep(0.5)
    response = httpx.get(url + "/healthz", timeout=30)
    assert response.status_code == 503
    for sock in held:
        sock.close()
    time.sleep(0.5)
    _forward_ok(url, HIDDEN)


def test_session_caps_per_client_expiry_and_cache_budget(strict_server):
    url = strict_server.url
    open_ = lambda: httpx.post(url + "/v1/sessions", timeout=30)  # noqa: E731
    first, second = open_().json()["session_id"], open_().json()["session_id"]
    third = open_()
    assert third.status_code == 429 and "this client" in third.json()["detail"]
    assert httpx.delete(f"{url}/v1/sessions/{second}").status_code == 200
    second = open_().json()["session_id"]
    # KV budget: 100 positions over all sessions
    assert _step(url, first, torch.randn(80, HIDDEN), 0).status_code == 200
    over = _step(url, second, torch.randn(30, HIDDEN), 0)
    assert over.status_code == 429 and "KV caches" in over.json()["detail"]
    # expiry runs on a timer: after the 2 s TTL and a 5 s sweep, nothing is open, unasked
    time.sleep(8)
    assert httpx.get(url + "/v1/info").json()["open_sessions"] == 0
    assert _step(url, first, torch.randn(1, HIDDEN), 1).status_code == 404
    assert open_().status_code == 200


def test_a_retried_step_is_not_applied_twice(export_dir, strict_server):
    """A step replayed with the same number returns the stored reply; the next step is then
    exactly what a session that saw every step once returns."""
    url = strict_server.url
    torch.manual_seed(0)
    a, b = torch.randn(3, HIDDEN), torch.randn(1, HIDDEN)

    def run(replay: bool) -> bytes:
        sid = httpx.post(url + "/v1/sessions").json()["session_id"]
        r0 = _step(url, sid, a, 0)
        if replay:
            assert _step(url, sid, a, 0).content == r0.content
            other = _step(url, sid, b, 0)
            assert other.status_code == 409 and "another input" in other.json()["detail"]
            skip = _step(url, sid, b, 5)
            assert skip.status_code == 409 and "expected step 1" in skip.json()["detail"]
        r1 = _step(url, sid, b, 1)
        httpx.delete(f"{url}/v1/sessions/{sid}")
        return r1.content

    assert run(replay=True) == run(replay=False)


class _LoseOneReply(httpx.HTTPTransport):
    """Forwards every request; drops the reply of the 3rd step as a network would."""

    def __init__(self):
        super().__init__()
        self.steps = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/step"):
            self.steps += 1
            if self.steps == 3:
                response.read()
                raise httpx.ReadTimeout("reply lost", request=request)
        return response


def test_the_client_retries_a_lost_step_without_corrupting_generation(
    export_dir, strict_server, plain_greedy, tokenizer
):
    result = export_dir(DECODER, "v2")
    prompt = [5, 17, 42, 8]
    with StipClient(result.user_dir, strict_server.url) as client:
        expected = client.generate(prompt, 8, stop_at_eos=False).token_ids
        lossy = _LoseOneReply()
        client.http = httpx.Client(base_url=client.url, transport=lossy, timeout=60)
        got = client.generate(prompt, 8, stop_at_eos=False).token_ids
    assert lossy.steps == 9  # 8 steps and one retry
    assert got == expected


def test_a_tokenizer_less_export_fails_before_writing(tmp_path, export_dir):
    from privformer.models.registry import resolve_model_dir

    source = tmp_path / "no-tokenizer"
    shutil.copytree(resolve_model_dir("minilm"), source)
    for f in source.glob("*"):
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            f.unlink()
    out = tmp_path / "out"
    with pytest.raises(ModelNotFoundError, match="tokenizer"):
        export(str(source), out, progress=False)
    assert not out.exists() or not any(out.iterdir())
    # with the tokenizer given explicitly it works
    user_dir = export_dir("minilm", "v1").user_dir
    result = export(str(source), out, progress=False, tokenizer=user_dir)
    assert StipUser(result.user_dir).tokenizer("hello world")["input_ids"][1] != 100  # not [UNK]
    # a user folder that lost its vocabulary is refused, not run on [UNK]s
    (result.user_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelNotFoundError, match="unknown tokens"):
        StipUser(result.user_dir)
    # a corrupt config.json is named, not a traceback from deep in transformers
    (source / "config.json").write_text("{broken")
    with pytest.raises(ModelNotFoundError, match="cannot load the model"):
        export(str(source), tmp_path / "out2", progress=False, tokenizer=user_dir)
    assert not (tmp_path / "out2").exists()
    # an output path that is a file
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        export("minilm", afile, progress=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "privformer.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_turns_expected_failures_into_one_line(export_dir, strict_server, server_for, tmp_path):
    user = str(export_dir(DECODER, "v2").user_dir)
    query = ["stip", "query", user, "--prompt", "hi", "--server"]
    cases = [
        ([*query, "nonsense"], "http://HOST:PORT"),
        ([*query, strict_server.url, "--max-new-tokens", "-1"], "max_new_tokens"),
        ([*query, strict_server.url, "--timeout", "0"], "--timeout"),
    ]
    broken = tmp_path / "user"
    shutil.copytree(user, broken)
    (broken / "user_config.json").write_text("{not json")
    cases.append((["stip", "query", str(broken), "--server", strict_server.url], "corrupted"))
    for args, fragment in cases:
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert lines[-1].startswith("privformer: error:") and fragment in lines[-1], out.stderr
        assert "Traceback" not in out.stderr
    # beyond the model's 256 positions: generation stops there and keeps its tokens
    long = ["--max-new-tokens", "100000", "--no-eos-stop", "--json"]
    out = _cli(*query, server_for(DECODER, "v2").url, *long)
    assert out.returncode == 0, out.stderr
    assert 200 < len(json.loads(out.stdout)["token_ids"]) <= 256


class _Liar(BaseHTTPRequestHandler):
    """A server that answers /v1/info like the real one, then lies in its tensors."""

    info: dict = {}
    reply: bytes = b""

    def do_GET(self):  # noqa: N802
        body = json.dumps(self.info).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path.startswith("/v1/sessions") and not self.path.split("?")[0].endswith("/step"):
            body = json.dumps({"session_id": "abc"}).encode()
        else:
            body = self.reply
        self.send_response(200)
        if b"undeclared" not in body[:200]:
            self.send_header("content-length", str(len(body)))
        self.end_headers()  # without a length (HTTP/1.0) the body runs until the socket closes
        with contextlib.suppress(ConnectionError):
            self.wfile.write(body)

    def do_DELETE(self):  # noqa: N802
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("model", "reply", "fragment"),
    [
        ("minilm", {"last_hidden_state": torch.full((1, 4, 384), float("nan"))}, "not finite"),
        ("minilm", {"last_hidden_state": torch.zeros(3, 4, 384)}, "shape"),
        ("minilm", {"something": torch.zeros(1)}, "lacks tensor"),
        (DECODER, {"top_values": torch.zeros(1), "top_indices": torch.tensor([-3])}, "outside"),
        (DECODER, {"top_values": torch.zeros(1), "top_indices": torch.tensor([0.5])}, "int64"),
        ("minilm", {"last_hidden_state": torch.zeros(1, 4, 384 * 800)}, "announced"),
        ("minilm", {"undeclared": torch.zeros(1, 4, 384 * 800)}, "reply passed"),
    ],
    ids=["nan", "batch", "missing", "negative-index", "fractional-index", "big", "big-stream"],
)
def test_the_client_refuses_a_lying_server(export_dir, server_for, model, reply, fragment):
    real = export_dir(model, "v2")
    with httpx.Client() as http:
        _Liar.info = {"model_fingerprint": 7}  # first a /v1/info that is not privformer's
        liar = ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
        threading.Thread(target=liar.serve_forever, daemon=True).start()
        with pytest.raises(WireFormatError, match="no valid 'model_fingerprint'"):
            StipClient(real.user_dir, f"http://127.0.0.1:{liar.server_port}")
        liar.shutdown()
        _Liar.info = http.get(server_for(model, "v2").url + "/v1/info").json()
    _Liar.reply = wire.encode(reply)
    liar = ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    threading.Thread(target=liar.serve_forever, daemon=True).start()
    try:
        with (
            StipClient(
                real.user_dir, f"http://127.0.0.1:{liar.server_port}", max_reply_bytes=1 << 20
            ) as client,
            pytest.raises(WireFormatError, match=fragment),
        ):
            if client.user.is_decoder:
                client.generate([5, 6], 2)
            else:
                client.hidden_states(["a b"])
    finally:
        liar.shutdown()
