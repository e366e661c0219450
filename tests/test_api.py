"""The one API: the same script runs STIP, CipherPrune and NEXUS in every mode they support,
artifacts round-trip through save_pretrained / from_pretrained, and bad use gets clear errors.

The model is ``minilm-rt-probe`` (the real MiniLM encoder with a linear probe on [CLS], fitted in
seconds). Tolerances: plain mode is the same float model in every protocol (STIP in float32,
CipherPrune and NEXUS in float64), so logits agree to float32 rounding (measured 4e-6; bound
1e-4). Simulate is each protocol's own arithmetic: STIP's permuted model is exact up to float32
summation order (bound 1e-4); NEXUS's and CipherPrune's approximations move logits by up to
~5e-3 (measured on these texts), so they are held to the same class as plain.
"""

from __future__ import annotations

import json

import pytest
import torch

import privformer as pf
from privformer.errors import (
    ArtifactError,
    InputError,
    ServerUnreachableError,
    UnknownNameError,
)

TEXTS = ["A gripping, beautifully acted film.", "Dull, predictable and far too long."]


@pytest.fixture(scope="module")
def models():
    return {p: pf.load("minilm-rt-probe", protocol=p) for p in ("stip", "cipherprune", "nexus")}


def test_one_script_runs_every_protocol_in_plain_and_simulate(models):
    plain = {p: m.predict(TEXTS, mode="plain") for p, m in models.items()}
    reference = plain["stip"].outputs.to(torch.float64)
    for protocol, result in plain.items():
        assert result.protocol == protocol and result.mode is pf.Mode.PLAIN
        assert result.outputs.shape == (2, 2)
        assert (result.outputs.to(torch.float64) - reference).abs().max() < 1e-4, protocol
    for protocol, model in models.items():
        sim = model.predict(TEXTS, mode=pf.Mode.SIMULATE)
        assert sim.labels == plain[protocol].labels, protocol
        if protocol == "stip":  # a permutation is exact
            assert (sim.outputs - plain["stip"].outputs).abs().max() < 1e-4
        else:  # approximations move the logits, measurably but not by much
            assert 0 < (sim.outputs - plain[protocol].outputs).abs().max() < 5e-2


def test_private_modes_match_simulate(models):
    stip = models["stip"].predict(TEXTS, mode="private")
    assert (stip.outputs - models["stip"].predict(TEXTS, "simulate").outputs).abs().max() < 1e-4
    assert stip.bytes_sent > 0 and stip.rounds == 1 and stip.revealed["tokens"][0] > 2
    # NEXUS's private mode runs client and server processes on OpenFHE for hours
    # per sentence: bench/nexus_encrypted.py measures it, tests/test_nexus_service*.py the path.


def test_cipherprune_private_mode_reports_traffic_and_what_it_revealed():
    model = pf.load("minilm-rt-probe", protocol="cipherprune", max_length=32)
    sim = model.predict(TEXTS[:1], mode="simulate")
    private = model.predict(TEXTS[:1], mode="encrypted")  # the old name of "private"
    assert private.mode is pf.Mode.PRIVATE
    assert private.labels == sim.labels
    assert (private.outputs - sim.outputs).abs().max() < 5e-3  # fixed-point rounding
    kept = private.revealed["tokens_per_layer"][0]
    assert kept[0] == 32 and kept[-1] < 32  # pruning happened, and its counts are revealed
    assert private.bytes_sent > 10**6 and private.rounds > 100


def test_cipherprune_deployment_round_trips_and_checks_its_manifest(tmp_path):
    model = pf.load("minilm-rt-probe", protocol="cipherprune", max_length=32)
    out = model.save_pretrained(tmp_path / "cp")
    for role in ("server", "client", "dealer"):
        manifest = json.loads((out / role / "privformer.json").read_text())
        assert manifest["protocol"] == "cipherprune" and manifest["role"] == role
        assert manifest["format_version"] == 1 and manifest["privformer_version"]
    again = pf.load(out)  # the deployment folder names its protocol
    assert isinstance(again, type(model))
    a, b = again.predict(TEXTS, "simulate"), model.predict(TEXTS, "simulate")
    assert (a.outputs - b.outputs).abs().max() == 0
    with pytest.raises(ArtifactError, match="not 'nexus'"):
        pf.load(out, protocol="nexus")
    with pytest.raises(InputError, match="dealer"):
        pf.Client.from_pretrained(out / "client", server="127.0.0.1:1")
    # a client of another format version is refused by name, before anything runs
    manifest = json.loads((out / "client" / "privformer.json").read_text())
    manifest["format_version"] = 99
    (out / "client" / "privformer.json").write_text(json.dumps(manifest))
    client = pf.Client.from_pretrained(out / "client", server=":1", dealer=":2")
    with pytest.raises(ArtifactError, match="format version 99"):
        client.predict(TEXTS)


def test_nexus_deployment_round_trips(models, tmp_path):
    out = models["nexus"].save_pretrained(tmp_path / "nx")
    again = pf.load(out)
    assert again.protocol == "nexus"
    a, b = again.predict(TEXTS, "simulate"), models["nexus"].predict(TEXTS, "simulate")
    assert (a.outputs - b.outputs).abs().max() == 0
    client = pf.Client.from_pretrained(out / "client", server="http://127.0.0.1:1")
    assert client.protocol == "nexus"
    with pytest.raises(ServerUnreachableError, match="127.0.0.1:1"):
        client.predict(TEXTS)


def test_nexus_layouts_and_their_calibration_survive_the_cache(monkeypatch):
    """``tokens`` picks the encrypted layout; its calibration (per-layer configs and the argmax
    bound) is cached by model and layout, and a load from the cache gets exactly what the
    calibrating load set (the argmax bound once fell back to 1.0 there, below the logits).
    Calibrated on 16 sentences and the 4 shortest and 4 longest to keep the test fast; the file
    is removed afterwards so no later load picks up that small calibration."""
    import privformer.api as api
    from privformer.models.registry import cache_dir

    monkeypatch.setattr(api, "NEXUS_CALIBRATION_SENTENCES", 16)
    monkeypatch.setattr(api, "NEXUS_CALIBRATION_EXTREMES", 4)
    cached = cache_dir() / "nexus" / "minilm2-rt-probe-16-tokens-calibration.json"
    cached.unlink(missing_ok=True)
    try:
        fresh = pf.load("minilm2-rt-probe", protocol="nexus", tokens=16).classifier
        again = pf.load("minilm2-rt-probe", protocol="nexus", tokens=16).classifier
        assert cached.is_file()
    finally:
        cached.unlink(missing_ok=True)
    assert fresh.tokens == again.tokens == 16
    assert again.configs == fresh.configs and again.argmax == fresh.argmax
    ids = list(range(1000, 1012))
    assert fresh.argmax.bound >= abs(fresh.logits(ids, "plain")).max()
    with pytest.raises(InputError, match="power of two"):
        pf.load("minilm2-rt-probe", protocol="nexus", tokens=48)


def test_nexus_runs_cipherprunes_fine_tuned_classifier(
    cipherprune_classifier, plain_model, tmp_path, monkeypatch
):
    """``minilm-rt`` under NEXUS is CipherPrune's classifier folder (here the fixture's MiniLM
    with a fitted head, saved as ``cipherprune train`` saves) converted back: its plain logits
    equal NEXUS's classifier read from ``transformers`` and CipherPrune's own plain forward (both
    float64 with exact functions: bound 1e-9, the rounding of unscaling the embedding tables),
    its simulate gives plain's class, and its calibration is cached under the weights' digest
    (removed afterwards)."""
    import privformer.api as api
    import privformer.protocols.cipherprune.train as train
    from privformer.models.registry import cache_dir
    from privformer.protocols.cipherprune.format import save_classifier
    from privformer.protocols.cipherprune.model import PruningConfig
    from privformer.protocols.cipherprune.session import CipherPruneClassifier
    from privformer.protocols.nexus.model import NexusClassifier

    weights, head = cipherprune_classifier
    folder = save_classifier(weights, PruningConfig.none(weights.layers), tmp_path / "minilm")
    monkeypatch.setattr(train, "default_classifier_dir", lambda base="minilm": folder)
    monkeypatch.setattr(api, "NEXUS_CALIBRATION_SENTENCES", 16)
    monkeypatch.setattr(api, "NEXUS_CALIBRATION_EXTREMES", 4)
    before = set((cache_dir() / "nexus").glob("minilm-rt-*-16-tokens-calibration.json"))
    try:
        model = pf.load("minilm-rt", protocol="nexus", tokens=16)
        written = set((cache_dir() / "nexus").glob("minilm-rt-*-16-tokens-calibration.json"))
    finally:
        for path in set((cache_dir() / "nexus").glob("minilm-rt-*-16-tokens-calibration.json")):
            if path not in before:
                path.unlink()
    assert len(written - before) == 1
    reference = NexusClassifier.from_hf(plain_model("minilm"), head)
    reference.tokens, reference.pad_id = 16, model.classifier.pad_id
    cp = CipherPruneClassifier.load(folder)
    for text in TEXTS:
        ids = model.tokenizer(text, truncation=True, max_length=16)["input_ids"]
        plain = model.classifier.logits(ids, "plain")
        assert abs(plain - reference.logits(ids, "plain")).max() < 1e-9
        padded, mask = cp.encode(text, 16)
        cp_plain = cp.run(padded, mask, mode="plain", prune=False).logits.numpy()
        assert abs(plain - cp_plain).max() < 1e-9
        assert model.classifier.logits(ids, "simulate").argmax() == plain.argmax()
    with pytest.raises(UnknownNameError, match="cipherprune train --base mpnet"):
        monkeypatch.setattr(train, "default_classifier_dir", lambda base="minilm": tmp_path / "x")
        pf.load("mpnet-rt", protocol="nexus")


def test_stip_client_from_pretrained_against_a_server_process(models, tmp_path):
    from privformer.transport.stip_server import ServerProcess

    out = models["stip"].save_pretrained(tmp_path / "st")
    with ServerProcess(out / "cloud") as server:
        result = pf.Client.from_pretrained(out / "user", server=server.url).predict(TEXTS)
    plain = models["stip"].predict(TEXTS, mode="plain")
    assert (result.outputs - plain.outputs).abs().max() < 1e-4
    assert result.labels == plain.labels and result.bytes_received > 0
    with pytest.raises(ArtifactError, match="STIP export"):
        pf.load(out)
    with pytest.raises(ArtifactError, match="'cloud' side"):
        pf.Client.from_pretrained(out / "cloud", server=server.url)


def test_bad_use_gets_errors_that_name_the_problem(models):
    with pytest.raises(UnknownNameError, match="unknown mode 'fast'"):
        models["nexus"].predict(TEXTS, mode="fast")
    with pytest.raises(UnknownNameError, match="unknown protocol 'bolt'"):
        pf.load("minilm-rt-probe", protocol="bolt")
    with pytest.raises(InputError, match="non-empty list of strings"):
        models["nexus"].predict([], mode="plain")
    with pytest.raises(UnknownNameError, match="no NEXUS model"):
        pf.load("minilm", protocol="nexus")
    with pytest.raises(ArtifactError, match="privformer.json missing"):
        pf.Client.from_pretrained("/", server="http://127.0.0.1:1")
