"""Export of the multimodal quickstart model: the item encoders as their own programs, content
prepared by the bundle exactly as in training, and the scoring graph fed raw content or item vectors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import QUICKSTART, write_config

from fusionrec.cli import main
from fusionrec.data.preprocessing import Preprocessor
from fusionrec.data.synthetic import quickstart_log
from fusionrec.errors import ConfigError
from fusionrec.plugins import get_registry
from fusionrec.serving import RequestError, load, load_onnx
from fusionrec.serving.bundle import read_checksums
from fusionrec.serving.content import content_preparer
from fusionrec.training.module import MultiTaskModule

LOG = {"rows": 3000, "users": 150, "items": 90, "seed": 0, "media": True}
CONTENT = ("item_title", "item_image", "item_audio")
TRUNKS = {"shared_bottom": {"name": "shared_bottom", "hidden": [32]},
          "mmoe": {"name": "mmoe", "num_experts": 2, "expert_hidden": [32]},
          "ple": {"name": "ple", "expert_hidden": [32]},
          "star": {"name": "star", "hidden": [32]},
          "pepnet": {"name": "pepnet", "tower": [16], "prior_fields": ["user_id"]},
          "scenario_towers": {"name": "scenario_towers", "base": {"name": "mmoe", "num_experts": 2,
                                                                  "expert_hidden": [32]}, "hidden": [16]}}
# Parity is checked for every trunk through torch.export; ONNX parity and the rest, which do not depend
# on the trunk, for the quickstart's (the other trunks' ONNX graphs: tests/test_export.py and
# tests/test_scenarios.py). The other trunks' bundles are exported with --no-onnx: the ONNX export
# of the item encoders takes most of an export's time.
WITH_ONNX = "mmoe"


def quickstart_config(trunk: dict) -> dict:
    """configs/quickstart.yaml as shipped (all its fields and encoders) on a small log, one short epoch."""
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"] = {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1, "logger": False,
                         "enable_progress_bar": False, "enable_model_summary": False}
    config["data"].update(generate=LOG, batch_size=256)
    config["model"]["trunk"] = trunk
    return config


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """``export(trunk) -> (checkpoint, bundle)``: each trunk fitted and exported once, whatever order the
    tests run in (a parametrized module fixture would be set up again for each parametrization)."""
    done = {}

    def fitted_and_exported(trunk: str):
        if trunk not in done:
            root = tmp_path_factory.mktemp(f"export-content-{trunk}")
            path = write_config(root, quickstart_config(TRUNKS[trunk]))
            assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(root),
                         "--test_after_fit", "false"]) == 0
            checkpoint, bundle = root / "checkpoints" / "last.ckpt", root / "bundle"
            no_onnx = [] if trunk == WITH_ONNX else ["--no-onnx"]
            assert main(["export", "--ckpt", str(checkpoint), "--out", str(bundle),
                         "--score", "{click: 1, like: 0.5}", *no_onnx]) == 0
            done[trunk] = checkpoint, bundle
        return done[trunk]

    return fitted_and_exported


def held_out_rows(count: int = 48) -> pd.DataFrame:
    """The log's last rows, with a title and an image missing, and the history a service sends as a
    list: 0 to 13 earlier [item, its category] pairs (more than the field's max_length of 10 in some
    rows, truncated)."""
    rows = pd.read_parquet(quickstart_log(**LOG)).iloc[-count:].reset_index(drop=True)
    rows.loc[3, "item_title"], rows.loc[5, "item_image"] = None, None
    items = rows[["item_id", "item_category"]].values.tolist()
    rows["clicked_before"] = [[items[(row + k) % count] for k in range(row % 14)] for row in range(count)]
    return rows


def request_rows(bundle, rows: pd.DataFrame) -> dict[str, list]:
    return {name: [None if isinstance(v, float) and v != v else (list(v) if isinstance(v, np.ndarray) else v)
                   for v in rows[name]] for name in bundle.manifest["preprocessing"]}


def test_the_bundle_holds_item_encoders_assets_metrics_and_checksums(export):
    checkpoint, bundle = export(WITH_ONNX)
    manifest = json.loads((bundle / "manifest.json").read_text())
    fields = manifest["content"]["fields"]
    assert set(fields) == set(CONTENT)
    assert {fields[f]["content"]["kind"] for f in CONTENT} == {"text", "image", "audio"}
    for field in CONTENT:
        assert (bundle / f"item_encoder.{field}.pt2").is_file() and (bundle / f"item_encoder.{field}.onnx").is_file()
    assert fields["item_title"]["content"]["tokenizer"] == "tokenizer.json"
    assert fields["item_image"]["content"] | {"kind": "image"} == fields["item_image"]["content"]
    assert fields["item_image"]["content"]["crop"] == 32
    assert fields["item_audio"]["content"]["num_samples"] == 8000
    # Every file, the tokenizer, golden media and manifest included, is listed with its checksum.
    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    checksums = read_checksums(bundle)
    assert set(checksums) == files
    assert {"manifest.json", "assets/item_title/tokenizer.json"} <= files
    assert any(f.startswith("golden/") for f in files)
    for name, digest in checksums.items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    # The scoring graph takes item vectors and presence flags for content fields.
    inputs = {entry["name"]: entry for entry in manifest["inputs"]}
    assert inputs["item_title"]["shape"] == ["batch", fields["item_title"]["dim"]]
    assert inputs["item_title.present"]["dtype"] == "bool"
    assert inputs["user_id"]["null"] == "the out-of-vocabulary id" and inputs["item_price"]["null"].startswith("missing")
    assert manifest["fused_score"] == {"terms": {"click": {"weight": 1.0, "offset": 0.0},
                                                 "like": {"weight": 0.5, "offset": 0.0}}, "combine": "product"}
    metrics = manifest["test_metrics"]
    assert {"test/loss", "test/click/auc", "test/watch_time/rmse"} <= set(metrics)
    assert 0.0 <= metrics["test/click/auc"] <= 1.0


@pytest.mark.parametrize("trunk, loader", [*((trunk, load) for trunk in TRUNKS), (WITH_ONNX, load_onnx)],
                         ids=[*(f"pt2-{trunk}" for trunk in TRUNKS), f"onnx-{WITH_ONNX}"])
def test_programs_and_module_agree_on_raw_content_and_on_item_vectors(export, trunk, loader):
    checkpoint, bundle_dir = export(trunk)
    bundle = loader(bundle_dir)
    bundle.check()  # golden rows: raw content, repeated items, a missing item and a precomputed vector
    module = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    rows = held_out_rows()
    # The reference: the training stack's preprocessing, with the frozen encoders' cached features.
    table = Preprocessor(module.hparams.preprocessing).transform(rows, get_registry(), with_labels=False)
    module.attach_content_encoders({"held_out": table})
    with torch.no_grad():
        outputs = module(table[list(range(len(rows)))].features)
    expected = {task: head.predict(outputs[task]).numpy() for task, head in module.model.heads.items()}
    request = request_rows(bundle, rows)
    scores = bundle.score(request)
    for task in expected:
        np.testing.assert_allclose(scores[task], expected[task], atol=1e-5, rtol=0)
    # Item vectors computed once per item stand in for the content.
    for field in CONTENT:
        known = [i for i, v in enumerate(request[field]) if isinstance(v, str) and v.strip()]
        vectors = bundle.encode_items(field, [request[field][i] for i in known])
        for position, row in enumerate(known):
            request[field][row] = vectors[position].tolist()
    by_vector = bundle.score(request)
    for task in expected:
        np.testing.assert_allclose(by_vector[task], expected[task], atol=1e-5, rtol=0)


def test_no_onnx_writes_the_torch_programs_only(export):
    _, bundle_dir = export("ple")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert not list(bundle_dir.rglob("*.onnx"))
    assert not any(name.endswith(".onnx") for name in read_checksums(bundle_dir))
    assert {entry["onnx"] for entry in manifest["content"]["fields"].values()} == {None}
    with pytest.raises(ConfigError, match=r"no model\.onnx \(exported with --no-onnx"):
        load_onnx(bundle_dir)


def test_content_is_prepared_as_in_training(export):
    checkpoint, bundle_dir = export(WITH_ONNX)
    module = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu")
    bundle = load(bundle_dir)
    rows = held_out_rows().iloc[:8]
    for field in CONTENT:
        contents = [v if isinstance(v, str) and v.strip() else None for v in rows[field]]
        training = module.model.encoders[field].encoder.prepare(contents)
        serving = content_preparer(bundle.content_fields[field]["content"], bundle_dir / "assets" / field)(contents)
        assert set(serving) - {"problems"} == set(training) - {"problems"}
        for key in set(serving) - {"problems"}:
            np.testing.assert_array_equal(serving[key], training[key].numpy())


def test_bad_content_names_the_field(export, tmp_path):
    _, bundle_dir = export(WITH_ONNX)
    bundle = load(bundle_dir)
    request = request_rows(bundle, held_out_rows().iloc[:2])
    with pytest.raises(RequestError, match=r"field 'item_image': .*missing\.png.*file not found"):
        bundle.score({**request, "item_image": [str(tmp_path / "missing.png"), None]})
    (tmp_path / "broken.wav").write_bytes(b"not a wav")
    with pytest.raises(RequestError, match="field 'item_audio': .*cannot decode audio"):
        bundle.score({**request, "item_audio": [str(tmp_path / "broken.wav"), None]})
    with pytest.raises(RequestError, match=r"field 'item_title': row 1: expected content \(a string\), an item vector"):
        bundle.score({**request, "item_title": ["a title", [1.0, 2.0]]})


def test_the_onnx_bundle_prepares_and_scores_content_without_torch_or_transformers(export, tmp_path):
    _, bundle_dir = export(WITH_ONNX)
    blocked = ("torch", "transformers", "torchvision", "torchaudio", "lightning", "pytorch_lightning", "pluggy",
               "pandas", "torchmetrics", "fusionrec_media", "fusionrec_trunks", "fusionrec_heads")
    script = f"""
import sys
for blocked in {blocked!r}:
    sys.modules[blocked] = None  # importing any of them now fails
from fusionrec.serving import load_onnx
bundle = load_onnx({str(bundle_dir)!r})
bundle.check()
print(bundle.encode_items("item_title", ["a title", "another"]).shape)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dim = json.loads((bundle_dir / "manifest.json").read_text())["content"]["fields"]["item_title"]["dim"]
    assert result.stdout.strip().splitlines()[-1] == f"(2, {dim})"


def test_the_service_reads_media_files_only_under_its_content_root(export):
    from fastapi.testclient import TestClient

    from fusionrec.serving.server import create_app

    _, bundle_dir = export(WITH_ONNX)
    bundle = load(bundle_dir)
    golden = json.loads((bundle_dir / "golden.json").read_text())["inputs"]
    rows = {name: values[:2] for name, values in golden.items()}
    rows["item_image"] = ["golden/item_image-0.png", None]
    rows["item_audio"] = [None, "golden/item_audio-1.wav"]
    with TestClient(create_app(bundle)) as client:  # no content root: no files at all
        answer = client.post("/score", json={"rows": rows})
        assert answer.status_code == 422 and "rows.item_image: row 0: this service reads no files" in answer.json()["detail"]
        vectors = dict(rows, item_image=[bundle.encode_items("item_image", [str(bundle_dir / "golden/item_image-0.png")])[0].tolist(), None],
                       item_audio=[None, bundle.encode_items("item_audio", [str(bundle_dir / "golden/item_audio-1.wav")])[0].tolist()])
        by_vector = client.post("/score", json={"rows": vectors})
        assert by_vector.status_code == 200, by_vector.text
    with TestClient(create_app(bundle, content_root=bundle_dir)) as client:
        by_file = client.post("/score", json={"rows": rows})
        assert by_file.status_code == 200, by_file.text
        for task, scores in by_file.json()["scores"].items():
            np.testing.assert_allclose(scores, by_vector.json()["scores"][task], atol=1e-5)
        outside = client.post("/score", json={"rows": dict(rows, item_image=["../../etc/passwd", None])})
        assert outside.status_code == 422 and "is outside --content-root" in outside.json()["detail"]
