"""fusionrec export: a bundle that scores like the trained module, loaded with torch alone."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from conftest import QUICKSTART, SMALL_LOG, small_config, write_config

from fusionrec.cli import main
from fusionrec.data.preprocessing import OUT_OF_VOCABULARY, PADDING, RESERVED, Preprocessor
from fusionrec.data.synthetic import generate_impressions
from fusionrec.plugins import get_registry
from fusionrec.serving import features as serving_features
from fusionrec.serving import load, load_onnx
from fusionrec.serving.bundle import read_checksums
from fusionrec.serving.command import open_bundle
from fusionrec.serving.server import create_app
from fusionrec.training.module import MultiTaskModule

TRUNKS = {"shared_bottom": {"name": "shared_bottom"}, "mmoe": {"name": "mmoe", "num_experts": 3, "expert_hidden": [32]},
          "ple": {"name": "ple", "expert_hidden": [32]}}


@pytest.fixture(scope="module", params=list(TRUNKS))
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    config = small_config(TRUNKS[request.param], trainer={"max_epochs": 1, "enable_checkpointing": True})
    path = write_config(root, config)
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(root), "--test_after_fit", "false"]) == 0
    (checkpoint,) = root.glob("**/epoch=*.ckpt")
    bundle = root / "bundle"
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(bundle)]) == 0
    return checkpoint, bundle


def held_out_rows(count: int = 64) -> pd.DataFrame:
    return generate_impressions(**SMALL_LOG).iloc[-count:].reset_index(drop=True)


def test_the_bundle_holds_program_weights_manifest_and_golden_rows(exported):
    checkpoint, bundle = exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = {"model.pt2", "model.onnx", "weights.safetensors", "manifest.json", "golden.json"}
    assert {f.name for f in bundle.iterdir()} == files | {"SHA256SUMS"}
    assert {entry["name"] for entry in manifest["inputs"]} == set(manifest["preprocessing"])
    probability = {"kind": "probability", "shape": ["batch"], "golden_tolerance": {"rtol": 1e-4, "atol": 1e-5}}
    assert manifest["outputs"] == {"click": probability, "like": probability, "watch_time": {
        "kind": "value", "shape": ["batch"], "golden_tolerance": {"rtol": 1e-4, "atol": 1e-4}}}
    assert manifest["components"]["trunk"]["name"] == torch.load(checkpoint, weights_only=True)["hyper_parameters"]["trunk"]["name"]
    # SHA256SUMS covers every other file, the manifest included, in sha256sum's own format.
    checksums = read_checksums(bundle)
    assert set(checksums) == files
    for name, digest in checksums.items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=bundle).returncode == 0
    from safetensors.torch import load_file
    module = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu")
    weights = load_file(bundle / "weights.safetensors")
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(weights[name], value)


@pytest.mark.parametrize("loader", [load, load_onnx], ids=["pt2", "onnx"])
def test_program_onnx_and_module_agree_on_golden_and_held_out_rows(exported, loader):
    checkpoint, bundle = exported
    scoring = loader(bundle)
    scoring.check()  # golden rows, within each output's recorded tolerance
    module = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    rows = held_out_rows()
    # The training stack's own preprocessing of the same rows is the reference.
    table = Preprocessor(module.hparams.preprocessing).transform(rows, get_registry(), with_labels=False)
    with torch.no_grad():
        outputs = module(table[list(range(len(rows)))].features)
    scores = scoring.score({name: rows[name].tolist() for name in scoring.manifest["preprocessing"]})
    for task, head in module.model.heads.items():
        np.testing.assert_allclose(scores[task], head.predict(outputs[task]).numpy(), atol=1e-5, rtol=0)
    # The batch dimension is dynamic down to one row.
    assert len(scoring.score({name: rows[name].tolist()[:1] for name in scoring.manifest["preprocessing"]})["click"]) == 1


TRAINING_STACK = ("lightning", "pytorch_lightning", "pluggy", "pandas", "torchmetrics", "fusionrec_trunks",
                  "fusionrec_heads", "fusionrec_tabular", "fusionrec_fusion", "fusionrec_balancers", "fusionrec_media")


@pytest.mark.parametrize("loader, blocked", [("load", TRAINING_STACK), ("load_onnx", TRAINING_STACK + ("torch",))],
                         ids=["pt2-torch-only", "onnx-without-torch"])
def test_the_bundle_scores_in_a_process_without_the_training_stack(exported, tmp_path, loader, blocked):
    _, bundle = exported
    script = f"""
import sys
for blocked in {blocked!r}:
    sys.modules[blocked] = None  # importing any of them now fails
from fusionrec.serving import {loader}
bundle = {loader}({str(bundle)!r})
bundle.check()
import json
golden = json.load(open({str(bundle / "golden.json")!r}))
print(sorted(bundle.score(golden["inputs"])))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['click', 'like', 'watch_time']"


def test_serving_encodes_like_the_training_preprocessing():
    assert (serving_features.PADDING, serving_features.OUT_OF_VOCABULARY, serving_features.RESERVED) == (
        PADDING, OUT_OF_VOCABULARY, RESERVED)
    tabular = "fusionrec_features.tabular"
    encode = serving_features.FeatureEncoder({
        "user": {"type": "categorical", "vocabulary": ["7", "a"], "implementation": f"{tabular}:Categorical"},
        "price": {"type": "numeric", "na_values": ["n/a"], "mean": 2.0, "std": 4.0,
                  "implementation": f"{tabular}:Numeric"},
        "tags": {"type": "multi_categorical", "vocabulary": ["x", "y"], "separator": "|", "max_length": 3,
                 "implementation": f"{tabular}:MultiCategorical"}})
    batch = encode({"user": [7.0, "a", "zzz", None], "price": [6, "n/a", None, 2.0], "tags": ["y|x|q|x", "", ["x"], None]})
    assert batch["user"].tolist() == [2, 3, 1, 1]
    assert batch["price"].tolist() == [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    assert batch["tags"].tolist() == [[3, 2, 1], [0, 0, 0], [2, 0, 0], [0, 0, 0]]
    with pytest.raises(serving_features.RequestError, match="missing field.*price"):
        encode({"user": [1], "tags": ["x"]})
    with pytest.raises(serving_features.RequestError, match="field 'price': row 0: expected a number, got 'cheap'"):
        encode({"user": [1], "price": ["cheap"], "tags": ["x"]})


def test_export_refuses_an_existing_directory_and_leaves_nothing_on_failure(exported, tmp_path, capsys):
    checkpoint, bundle = exported
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(bundle)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "b")]) == 2
    assert list(tmp_path.iterdir()) == []


def test_the_shipped_quickstart_model_serves_with_both_runtimes(tmp_path):
    """configs/quickstart.yaml as shipped (its fields, media encoders, trunk and tasks) on a smaller log for
    one epoch: its bundle opens as `fusionrec serve` opens it, golden check included, and serves its
    golden rows over HTTP with either runtime.
    Its regression output (values ~1-5) is the one an absolute 1e-5 failed under ONNX."""
    log = "{rows: 5000, users: 300, items: 200, seed: 0, media: true}"
    assert main(["fit", "--config", str(QUICKSTART), "--data.generate", log, "--trainer.max_epochs", "1",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
                 "--test_after_fit", "false"]) == 0
    (checkpoint,) = tmp_path.glob("**/last.ckpt")
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "bundle"), "--skip-test-metrics"]) == 0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert set(manifest["content"]["fields"]) == {"item_title", "item_image", "item_audio"}
    assert manifest["outputs"]["watch_time"]["golden_tolerance"]["rtol"] > 0
    golden = json.loads((tmp_path / "bundle" / "golden.json").read_text())
    for runtime in ("pt2", "onnx"):
        bundle = open_bundle(tmp_path / "bundle", runtime)
        # Served over HTTP: the golden rows (image and audio files named relative to the bundle) score as at export.
        with TestClient(create_app(bundle, content_root=tmp_path / "bundle")) as client:
            answer = client.post("/score", json={"rows": golden["inputs"]})
        assert answer.status_code == 200, answer.text
        for task, expected in golden["outputs"].items():
            tolerance = manifest["outputs"][task]["golden_tolerance"]
            np.testing.assert_allclose(answer.json()["scores"][task], expected, **tolerance)
