"""The layering rule holds (imports only run downward, no private names across modules), and
the checker that enforces it in CI fails on a planted violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / ".ci" / "check_layers.py"


def _check(package: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHECK), str(package)], capture_output=True, text=True, timeout=60
    )


def test_the_package_imports_only_downward():
    result = _check(ROOT / "privformer")
    assert result.returncode == 0, result.stdout


def test_the_checker_fails_on_planted_violations(tmp_path):
    package = tmp_path / "privformer"
    shutil.copytree(ROOT / "privformer", package)
    circuits = package / "crypto" / "ckks" / "circuits.py"
    circuits.write_text(circuits.read_text() + "\nfrom privformer.protocols.nexus import layer\n")
    encoder = package / "models" / "encoder.py"
    encoder.write_text(encoder.read_text() + "\nfrom privformer.crypto.mpc.shared import _x\n")
    nexus = package / "protocols" / "nexus" / "layer.py"
    nexus.write_text(nexus.read_text() + "\nimport privformer.protocols.cipherprune.model\n")
    result = _check(package)
    assert result.returncode == 1
    assert "upward import: privformer.crypto.ckks.circuits (layer 3)" in result.stdout
    assert "imports privformer.protocols.nexus (layer 4)" in result.stdout
    assert "upward import: privformer.models.encoder (layer 1)" in result.stdout
    assert "imports private privformer.crypto.mpc.shared._x" in result.stdout
    assert "sideways import: privformer.protocols.nexus imports" in result.stdout
    assert "4 violation(s)" in result.stdout
