"""STIP through the real HTTP server (``privformer serve`` in a child process).

Generation: greedy decoding of 20 tokens through the server must equal plain ``transformers``
greedy generation token for token (end-of-sequence stopping off on both sides, so all 20 tokens
are compared). Bad input must get a clear 4xx answer while the server keeps serving.
"""

from __future__ import annotations

import httpx
import pytest
import torch
from cases import DECODERS, PROMPTS, TEXTS

from privformer.errors import InputError, KeyMismatchError, ServerError
from privformer.transport import stip_client as client_module
from privformer.transport import tensors as wire
from privformer.transport.stip_client import StipClient

NEW_TOKENS = 20


@pytest.mark.parametrize("scheme", ["v1", "v2"])
@pytest.mark.parametrize("name", DECODERS)
def test_greedy_generation_over_http_equals_plain_generate(
    plain_greedy, tokenizer, name, scheme, export_dir, server_for
):
    result, server = export_dir(name, scheme), server_for(name, scheme)
    with StipClient(result.user_dir, server.url) as client:
        for prompt in PROMPTS:
            prompt_ids = tokenizer(name)(prompt, add_special_tokens=False)["input_ids"]
            gen = client.generate(prompt_ids, NEW_TOKENS, stop_at_eos=False)
            assert gen.token_ids == plain_greedy(name, prompt_ids, NEW_TOKENS), prompt
        assert client.stats.requests == NEW_TOKENS * len(PROMPTS)  # one round trip per token


def test_full_logit_transfer_gives_the_same_tokens_as_top1(tokenizer, export_dir, server_for):
    result, server = export_dir("smollm2", "v2"), server_for("smollm2", "v2")
    prompt_ids = tokenizer("smollm2")(PROMPTS[0], add_special_tokens=False)["input_ids"]
    with StipClient(result.user_dir, server.url) as client:
        top1 = client.generate(prompt_ids, 8, stop_at_eos=False, top_k_transfer=True)
        top1_bytes = client.stats.bytes_received
        client.stats.reset()
        full = client.generate(prompt_ids, 8, stop_at_eos=False, top_k_transfer=False)
        assert full.token_ids == top1.token_ids
        # full permuted logits: 8 x 49152 floats come back instead of 8 x (value, index)
        assert client.stats.bytes_received > 8 * 49152 * 4 > 100 * top1_bytes


def test_encoder_embeddings_over_http_equal_plain(plain_model, tokenizer, export_dir, server_for):
    result, server = export_dir("minilm", "v2"), server_for("minilm", "v2")
    model, tok = plain_model("minilm"), tokenizer("minilm")
    with StipClient(result.user_dir, server.url) as client:
        hidden = client.hidden_states(TEXTS)  # one padded batch
    for text, private in zip(TEXTS, hidden, strict=True):
        with torch.inference_mode():
            plain = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
        assert private.shape == plain.shape
        assert (private - plain).abs().max() <= 1e-4  # MiniLM: fp32 reordering gives ~3e-6


def test_the_cloud_receives_only_permuted_float_embeddings(
    tokenizer, export_dir, server_for, monkeypatch
):
    """Everything that leaves the user is a float32 d-vector per token, permuted by pi (and a 0/1
    attention mask); never a token id, an un-permuted embedding or key material."""
    result, server = export_dir("minilm", "v1"), server_for("minilm", "v1")
    sent: list[bytes] = []
    real_encode = wire.encode
    monkeypatch.setattr(
        client_module.wire, "encode", lambda t, m=None: sent.append(real_encode(t, m)) or sent[-1]
    )
    with StipClient(result.user_dir, server.url) as client:
        client.hidden_states(TEXTS[:1])
        user = client.user
    (payload,) = sent
    tensors, _ = wire.decode(payload)
    assert set(tensors) == {"inputs_embeds", "attention_mask"}
    embeds = tensors["inputs_embeds"]
    assert embeds.dtype == torch.float32 and embeds.shape[-1] == 384
    assert set(tensors["attention_mask"].unique().tolist()) <= {0, 1}
    ids = tokenizer("minilm")(TEXTS[0], return_tensors="pt")["input_ids"]
    plain = user.embed(ids)
    assert torch.equal(embeds, plain[..., user.key.pi])
    assert (embeds - plain).abs().max() > 0.01  # it is not the plain embedding
    assert user.key.pi.numpy().tobytes() not in payload  # the key itself never travels


def test_a_key_for_another_model_is_refused_before_sending(export_dir, server_for):
    other_user = export_dir("minilm", "v1").user_dir
    server = server_for("minilm", "v2")  # same base model, different export and key
    with pytest.raises(KeyMismatchError, match="belongs to model"):
        StipClient(other_user, server.url)


def _post(url: str, path: str, body: bytes, **kw) -> httpx.Response:
    return httpx.post(url + path, content=body, timeout=60, **kw)


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(export_dir, server_for):
    server = server_for("minilm", "v2")
    url = server.url
    cases = [
        (wire.encode({"inputs_embeds": torch.randn(1, 5, 100)}), 422, "hidden size 100"),
        (wire.encode({"inputs_embeds": torch.full((1, 5, 384), float("nan"))}), 422, "NaN"),
        (wire.encode({"inputs_embeds": torch.randn(1, 600, 384)}), 422, "positions"),
        (wire.encode({"inputs_embeds": torch.randn(5, 384).double()}), 422, "float32"),
        (
            wire.encode(
                {
                    "inputs_embeds": torch.randn(1, 4, 384),
                    "attention_mask": torch.ones(1, 3, dtype=torch.int64),
                }
            ),
            422,
            "attention_mask",
        ),
        (wire.encode({"something": torch.randn(3)}), 400, "lacks tensor 'inputs_embeds'"),
        (b"not a payload at all", 400, "header"),
        (wire.encode({"inputs_embeds": torch.randn(2, 384)})[:-7], 400, "malformed"),
        (b"\x00" * 4, 400, "shorter"),
    ]
    for body, status, fragment in cases:
        response = _post(url, "/v1/forward", body)
        assert response.status_code == status, (fragment, response.text)
        assert fragment in response.json()["detail"], response.json()
    # a malformed Content-Length (httpx refuses to send one, so write the request by hand)
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/forward HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nx")
        status_line = sock.recv(200).split(b"\r\n")[0]
    assert status_line.startswith(b"HTTP/1.1 4"), status_line  # a client error, never a 500
    # wrong wire version
    from safetensors.torch import save

    response = _post(
        url,
        "/v1/forward",
        save({"inputs_embeds": torch.randn(2, 384)}, metadata={"privformer-wire": "9"}),
    )
    assert response.status_code == 400 and "wire version" in response.json()["detail"]
    # an encoder has no sessions
    assert httpx.post(url + "/v1/sessions").status_code == 422
    # the server still answers a good request
    good = _post(url, "/v1/forward", wire.encode({"inputs_embeds": torch.randn(1, 4, 384)}))
    assert good.status_code == 200
    assert wire.decode(good.content)[0]["last_hidden_state"].shape == (1, 4, 384)


def test_session_errors(export_dir, server_for):
    server = server_for("random:llama-gqa", "v2")
    url = server.url
    step = wire.encode({"inputs_embeds": torch.randn(1, 64)})
    assert _post(url, "/v1/sessions/nope/step", step).status_code == 404
    sid = httpx.post(url + "/v1/sessions").json()["session_id"]
    first = {"seq": 0}
    assert (
        _post(url, f"/v1/sessions/{sid}/step", step, params={**first, "top_k": 0}).status_code
        == 422
    )
    assert (
        _post(
            url,
            f"/v1/sessions/{sid}/step",
            wire.encode({"inputs_embeds": torch.randn(1, 1, 64)}),
            params=first,
        ).status_code
        == 422
    )
    assert _post(url, f"/v1/sessions/{sid}/step", step).status_code == 409  # no seq
    ok = _post(url, f"/v1/sessions/{sid}/step", step, params={**first, "top_k": 3})
    assert ok.status_code == 200 and wire.decode(ok.content)[0]["top_indices"].shape == (3,)
    too_long = wire.encode({"inputs_embeds": torch.randn(256, 64)})  # 1 + 256 > 256 positions
    detail = _post(url, f"/v1/sessions/{sid}/step", too_long, params={"seq": 1}).json()["detail"]
    assert "positions" in detail
    assert httpx.delete(url + f"/v1/sessions/{sid}").status_code == 200
    assert httpx.delete(url + f"/v1/sessions/{sid}").status_code == 404


def test_client_surfaces_server_errors_and_user_side_checks(export_dir, server_for):
    result, server = export_dir("smollm2", "v1"), server_for("smollm2", "v1")
    with StipClient(result.user_dir, server.url) as client:
        with pytest.raises(InputError, match="token ids must lie"):
            client.user.embed(torch.tensor([5, 10**6]))
        with pytest.raises(InputError, match="encoder"):
            client.hidden_states(["hi"])
        with pytest.raises(ServerError, match="404"):
            client._post_tensors(
                "/v1/sessions/missing/step", {"inputs_embeds": torch.randn(1, 576)}
            )
