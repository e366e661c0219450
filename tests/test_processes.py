"""The three STIP roles as three separate OS processes, driven through the CLI over localhost.

developer: ``privformer stip export``; cloud: ``privformer stip serve``; user: ``privformer stip
query`` (and the first release's names ``privformer serve`` / ``query``, kept as aliases).
The test process compares the user's printed result with the plain model it loads itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import torch
from cases import PROMPTS, TEXTS

from privformer.models.pooling import plain_sentence_embeddings
from privformer.transport.processes import ChildProcess

CLI = [sys.executable, "-m", "privformer.cli.main"]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=os.environ
    )


def _start_cloud(path: Path) -> tuple[ChildProcess, str]:
    cloud = ChildProcess(["stip", "serve", str(path), "--port", "0"]).__enter__()
    url = f"http://127.0.0.1:{cloud.port}"
    assert httpx.get(url + "/healthz").json() == {"ok": True}
    return cloud, url


def test_developer_cloud_user_as_three_processes_encoder(plain_model, tokenizer, tmp_path):
    out = tmp_path / "export"
    developer = _run("stip", "export", "minilm", "--out", str(out), "--scheme", "v2")
    assert developer.returncode == 0, developer.stderr
    assert (out / "cloud" / "model.safetensors").is_file() and (out / "user" / "user.key").is_file()

    cloud, url = _start_cloud(out / "cloud")
    try:
        args = [str(out / "user"), "--server", url, "--text", *TEXTS[:2], "--json"]
        user = _run("stip", "query", *args)
        assert user.returncode == 0, user.stderr
        result = json.loads(user.stdout)
        alias = _run("query", *args)  # the old name still works, and says it is old
        assert alias.returncode == 0 and "now `privformer stip query`" in alias.stderr
        assert json.loads(alias.stdout)["embeddings"] == result["embeddings"]
    finally:
        cloud.__exit__()
    private = torch.tensor(result["embeddings"])
    plain = plain_sentence_embeddings(plain_model("minilm"), tokenizer("minilm"), TEXTS[:2])
    assert (private - plain).abs().max() <= 1e-4
    assert result["wire"]["requests"] == 1 and result["wire"]["bytes_sent"] > 0


def test_developer_cloud_user_as_three_processes_decoder(plain_greedy, tokenizer, tmp_path):
    out = tmp_path / "export"
    assert (
        _run("stip", "export", "random:llama-gqa", "--out", str(out), "--scheme", "v1").returncode
        == 0
    )
    cloud, url = _start_cloud(out)  # the export folder resolves to cloud/
    try:
        user = _run(
            "stip",
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
        cloud.__exit__()
    prompt_ids = tokenizer("random:llama-gqa")(PROMPTS[0], add_special_tokens=False)["input_ids"]
    assert result["token_ids"] == plain_greedy("random:llama-gqa", prompt_ids, 12)


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    missing = _run("stip", "export", "no-such-model", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2
    assert "no local model 'no-such-model'" in missing.stderr and "Traceback" not in missing.stderr
    not_cloud = _run("stip", "serve", str(tmp_path))
    assert not_cloud.returncode == 2 and "no STIP cloud checkpoint" in not_cloud.stderr
    bad_user = _run("stip", "query", str(tmp_path), "--text", "hi")
    assert bad_user.returncode == 2 and "not a STIP user folder" in bad_user.stderr


def test_cli_reports_an_unreachable_server_in_one_line(export_dir):
    user_dir = export_dir("minilm", "v2").user_dir
    gone = _run("stip", "query", str(user_dir), "--server", "http://127.0.0.1:9", "--text", "hi")
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    assert gone.stderr.startswith("privformer: error:") and len(gone.stderr.splitlines()) == 1
    nexus = _run(
        "nexus",
        "query",
        "--server",
        "http://127.0.0.1:9",
        "--keys",
        "none",
        "--model",
        "minilm2-rt-probe",
        "--text",
        "hi",
    )
    assert nexus.returncode == 2 and "Traceback" not in nexus.stderr
    assert "NEXUS server http://127.0.0.1:9" in nexus.stderr and len(nexus.stderr.splitlines()) == 1


def test_nexus_plan_prints_bootstraps_per_layer_and_the_planner_table():
    import re

    plan = _run("nexus", "plan", "A gripping film.", "--model", "minilm2-rt-probe")
    assert plan.returncode == 0, plan.stderr
    per_layer = [int(m) for m in re.findall(r"^layer \d: (\d+) bootstraps", plan.stdout, re.M)]
    total = int(re.search(r"^total: (\d+) bootstraps", plan.stdout, re.M).group(1))
    assert len(per_layer) == 2 and total == sum(per_layer) > 0
    planned = int(re.search(r"^total\s+(\d+)", plan.stdout, re.M).group(1))
    assert 0 < planned <= max(per_layer)  # the main chain's optimum, side chains excluded
    assert "GELU" in plan.stdout and "softmax round 0" in plan.stdout
