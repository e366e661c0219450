"""The three STIP roles as three separate OS processes, driven through the CLI over localhost.

developer: ``privformer stip export``; cloud: ``privformer serve``; user: ``privformer query``.
The test process compares the user's printed result with the plain model it loads itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from conftest import PROMPTS, TEXTS, plain_greedy, plain_model, tokenizer

from privformer.models.pooling import plain_sentence_embeddings

CLI = [sys.executable, "-m", "privformer.cli.main"]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=os.environ
    )


def _start_cloud(cloud_dir: Path, ready: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [*CLI, "serve", str(cloud_dir), "--port", "0", "--ready-file", str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{ready.read_text()}"
    assert httpx.get(url + "/healthz").json() == {"ok": True}
    return proc, url


def test_developer_cloud_user_as_three_processes_encoder(tmp_path):
    out = tmp_path / "export"
    developer = _run("stip", "export", "minilm", "--out", str(out), "--scheme", "v2")
    assert developer.returncode == 0, developer.stderr
    assert (out / "cloud" / "model.safetensors").is_file() and (out / "user" / "user.key").is_file()

    cloud, url = _start_cloud(out / "cloud", tmp_path / "port")
    try:
        user = _run("query", str(out / "user"), "--server", url, "--text", *TEXTS[:2], "--json")
        assert user.returncode == 0, user.stderr
        result = json.loads(user.stdout)
    finally:
        cloud.terminate()
        cloud.wait(timeout=15)
    private = torch.tensor(result["embeddings"])
    plain = plain_sentence_embeddings(plain_model("minilm"), tokenizer("minilm"), TEXTS[:2])
    assert (private - plain).abs().max() <= 1e-4
    assert result["wire"]["requests"] == 1 and result["wire"]["bytes_sent"] > 0


def test_developer_cloud_user_as_three_processes_decoder(tmp_path):
    out = tmp_path / "export"
    assert (
        _run("stip", "export", "random:llama-gqa", "--out", str(out), "--scheme", "v1").returncode
        == 0
    )
    cloud, url = _start_cloud(out, tmp_path / "port")  # the export folder resolves to cloud/
    try:
        user = _run(
            "query",
            str(out / "user"),
            "--server",
            url,
            "--prompt",
            PROMPTS[0],
            "--max-new-tokens",
            "12",
            "--no-eos-stop",
            "--json",
        )
        assert user.returncode == 0, user.stderr
        result = json.loads(user.stdout)
    finally:
        cloud.terminate()
        cloud.wait(timeout=15)
    prompt_ids = tokenizer("random:llama-gqa")(PROMPTS[0], add_special_tokens=False)["input_ids"]
    assert result["token_ids"] == plain_greedy("random:llama-gqa", prompt_ids, 12)


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    missing = _run("stip", "export", "no-such-model", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2
    assert "no local model 'no-such-model'" in missing.stderr and "Traceback" not in missing.stderr
    not_cloud = _run("serve", str(tmp_path))
    assert not_cloud.returncode == 2 and "no STIP cloud checkpoint" in not_cloud.stderr
    bad_user = _run("query", str(tmp_path), "--text", "hi")
    assert bad_user.returncode == 2 and "not a STIP user folder" in bad_user.stderr
