"""A retrieval checkpoint's bundle: user and item tower programs (torch.export and ONNX) that match the
checkpoint, the catalogue's item vectors, and ``POST /recommend`` answering the checkpoint's exact top K."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMALL_LOG, retrieval_config, write_config
from test_export import TRAINING_STACK
from fastapi.testclient import TestClient

from fusionrec.cli import main
from fusionrec.data.preprocessing import feature_types
from fusionrec.data.synthetic import quickstart_log
from fusionrec.serving import BundleError, load, load_onnx
from fusionrec.serving.server import create_app
from fusionrec.training.checkpoint import load_module

HISTORIES = [[3, 17, 4], [], [250, "never-seen", 9, 9, 12, 40, 41, 42, 43, 44], None]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, items table, bundle with the catalogue's vectors, bundle without)."""
    root = tmp_path_factory.mktemp("retrieval_bundle")
    config = retrieval_config()
    config["trainer"].update(max_epochs=1, enable_checkpointing=True)
    assert main(["fit", "--config", str(write_config(root, config)), "--trainer.default_root_dir", str(root),
                 "--test_after_fit", "false"]) == 0
    (checkpoint,) = root.glob("**/epoch=*.ckpt")
    log = pd.read_parquet(quickstart_log(**SMALL_LOG))
    items = root / "items.parquet"
    log.drop_duplicates("item_id")[["item_id", "item_category"]].to_parquet(items)
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(root / "bundle"), "--items", str(items),
                 "--skip-test-metrics"]) == 0
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(root / "bare"), "--skip-test-metrics",
                 "--no-onnx"]) == 0
    return checkpoint, items, root / "bundle", root / "bare"


@pytest.fixture(scope="module")
def module(exported):
    return load_module(exported[0], "--ckpt")


@pytest.fixture(scope="module")
def users():
    """Four users of the log with histories: some known items, none, an unknown id and repeats, null."""
    log = pd.read_parquet(quickstart_log(**SMALL_LOG)).drop_duplicates("user_id").head(len(HISTORIES))
    return {"user_id": log["user_id"].tolist(), "user_segment": log["user_segment"].tolist(),
            "user_age": log["user_age"].tolist(), "clicked_before": HISTORIES}


def module_vectors(module, side: str, rows: dict) -> np.ndarray:
    """The checkpoint's own tower on raw rows, encoded by each feature type's training transform."""
    types = feature_types(module.hparams.preprocessing["features"])
    features = {name: torch.from_numpy(types[name].transform(values)) for name, values in rows.items()}
    with torch.no_grad():
        encode = module.model.encode_users if side == "user" else module.model.encode_items
        return encode(features).numpy()


def catalogue(module, items) -> tuple[list, np.ndarray]:
    frame = pd.read_parquet(items)
    return frame["item_id"].tolist(), module_vectors(module, "item", {name: frame[name].tolist()
                                                                      for name in module.model.item_fields})


@pytest.mark.parametrize("loader", [load, load_onnx])
def test_towers_and_item_vectors_match_the_checkpoint(exported, module, users, loader):
    _, items, bundle_dir, _ = exported
    bundle = loader(bundle_dir)
    bundle.check()  # the golden rows' pair scores and both towers' vectors
    np.testing.assert_allclose(bundle.tower_vectors("user", users), module_vectors(module, "user", users),
                               rtol=1e-5, atol=1e-5)
    keys, vectors = catalogue(module, items)
    frame = pd.read_parquet(items)
    item_rows = {name: frame[name].tolist() for name in ("item_id", "item_category")}
    np.testing.assert_allclose(bundle.tower_vectors("item", item_rows), vectors, rtol=1e-5, atol=1e-5)
    assert bundle.catalogue_keys == keys and bundle.retrieval["temperature"] == module.model.temperature
    np.testing.assert_allclose(bundle.catalogue_vectors, vectors, rtol=1e-5, atol=1e-5)


def test_recommend_answers_the_checkpoints_exact_top_k(exported, module, users):
    _, items, bundle_dir, _ = exported
    keys, vectors = catalogue(module, items)
    expected_scores = module_vectors(module, "user", users) @ vectors.T / module.model.temperature  # [U, N]
    exclude = [keys[5], str(keys[7]), float(keys[11]), "not-an-item"]  # ids match as strings: 7, "7", 7.0
    with TestClient(create_app(load_onnx(bundle_dir))) as client:
        for user in range(len(HISTORIES)):
            body = {"user": {field: values[user] for field, values in users.items()}, "k": 12}
            for excluded in ([], exclude):
                answer = client.post("/recommend", json={**body, "exclude": excluded})
                assert answer.status_code == 200, answer.text
                scores = expected_scores[user].copy()
                dropped = [keys.index(key) for key in (keys[5], keys[7], keys[11])] if excluded else []
                scores[dropped] = -np.inf
                best = np.argsort(-scores, kind="stable")[:12]
                assert answer.json()["items"] == [keys[row] for row in best]
                np.testing.assert_allclose(answer.json()["scores"], scores[best], rtol=1e-5, atol=1e-5)
        # k beyond the catalogue: every item not excluded, best first
        everything = client.post("/recommend", json={**body, "k": 10_000, "exclude": exclude}).json()
        assert len(everything["items"]) == len(keys) - 3 and sorted(map(str, everything["items"])) == sorted(
            str(key) for key in keys if key not in (keys[5], keys[7], keys[11]))
        assert everything["scores"] == sorted(everything["scores"], reverse=True)
        assert len(client.post("/recommend", json={"user": body["user"]}).json()["items"]) == 10  # the default k


def test_the_onnx_bundle_recommends_in_a_process_without_torch_or_the_training_stack(exported, users, tmp_path):
    user = {field: values[1] for field, values in users.items()}  # the user without a history
    script = f"""
import sys
for blocked in {TRAINING_STACK + ("torch", "fusionrec_retrieval")!r}:
    sys.modules[blocked] = None  # importing any of them now fails
from fusionrec.serving import load_onnx
bundle = load_onnx({str(exported[2])!r})
bundle.check()
print(bundle.recommend({user!r}, k=3)["items"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(load(exported[2]).recommend(user, k=3)["items"])


@pytest.mark.parametrize("change, message", [
    ({"user": {"item_id": 3}}, "unknown field(s) user.item_id; the user tower's fields: user_id, user_segment, "
                               "user_age, clicked_before"),
    ({"user": {"user_age": "old"}}, "user.user_age: row 0: expected a number, got 'old'"),
    ({"user": {"clicked_before": 5}}, "user.clicked_before: row 0: expected a list of ids"),
    ({"user": {"clicked_before": list(range(2000))}}, "user.clicked_before: row 0: a list of 2000 elements, more than"),
    ({"exclude": [{"id": 1}]}, "exclude: row 0: expected a string or a number naming an item, got {'id': 1}"),
    ({"k": 0}, "k: Input should be greater than or equal to 1"),
    ({"items": {"item_id": [1]}}, "items: Extra inputs are not permitted"),
])
def test_recommend_refuses_bad_requests_naming_the_field(exported, users, change, message):
    user = {field: values[0] for field, values in users.items()}
    body = {"user": {**user, **change.pop("user", {})}, **change}
    with TestClient(create_app(load(exported[2]))) as client:
        answer = client.post("/recommend", json=body)
        missing = client.post("/recommend", json={"user": {k: v for k, v in user.items() if k != "user_age"}})
    assert answer.status_code == 422 and message in answer.json()["detail"], answer.text
    assert missing.status_code == 422 and missing.json()["detail"] == "missing field(s): user_age"


def test_a_bundle_without_item_vectors_says_to_export_with_items(exported, users):
    bundle = load(exported[3])
    bundle.check()  # the towers are there
    user = {field: values[0] for field, values in users.items()}
    with TestClient(create_app(bundle)) as client:
        answer = client.post("/recommend", json={"user": user})
    assert answer.status_code == 400 and "export the checkpoint again with --items" in answer.json()["detail"]
    with pytest.raises(BundleError, match="--items ITEMS_TABLE"):
        bundle.recommend(user)


def test_export_refuses_an_empty_or_incomplete_catalogue_and_a_fused_score(exported, tmp_path, capsys):
    checkpoint, items, _, _ = exported
    frame = pd.read_parquet(items)
    frame.head(0).to_parquet(tmp_path / "empty.parquet")
    frame[["item_id"]].to_parquet(tmp_path / "no_category.parquet")
    for table, message in (("empty.parquet", "empty.parquet has no rows"),
                           ("no_category.parquet", "has no column 'item_category', an item-side field of the "
                                                   "retrieval model (model.retrieval.item.fields: item_id, "
                                                   "item_category)")):
        assert main(["export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "b"), "--items",
                     str(tmp_path / table)]) == 2
        error = capsys.readouterr().err
        assert f"fusionrec: error: --items: {tmp_path / table}" in error and message in error
        assert not (tmp_path / "b").exists()
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "b"), "--score", "{click: 1}"]) == 2
    assert "--score: a retrieval bundle's /recommend ranks by its towers' score" in capsys.readouterr().err
    manifest = json.loads((exported[2] / "manifest.json").read_text())
    assert manifest["retrieval"]["catalogue"]["items"] == len(frame)
