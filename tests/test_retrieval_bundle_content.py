"""A retrieval bundle whose item tower reads a text field (through a frozen BERT): the tower programs take
the title as the scoring graph takes content (item vector and ``present``), the catalogue's item vectors
come from the checkpoint with its titles, and ``POST /recommend`` answers the checkpoint's exact top K."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import retrieval_config, save_tiny_bert, write_config
from fastapi.testclient import TestClient

from fusionrec.cli import main
from fusionrec.data.preprocessing import feature_types
from fusionrec.data.synthetic import quickstart_log
from fusionrec.data.synthetic_media import FILLER_WORDS, TITLE_WORDS
from fusionrec.recommend.catalogue import Side, transform_side
from fusionrec.serving import load, load_onnx
from fusionrec.serving.server import create_app
from fusionrec.training.checkpoint import load_module

LOG = {"rows": 3000, "users": 150, "items": 90, "seed": 0, "media": True}
ITEM_FIELDS = ["item_id", "item_category", "item_title"]
NO_TITLE = 4  # the catalogue's row whose title is left out: it takes the learned missing vector


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(module, items table, bundle with the catalogue's item vectors)."""
    root = tmp_path_factory.mktemp("retrieval_content")
    words = sorted({w for levels in TITLE_WORDS.values() for pair in levels for w in pair} | set(FILLER_WORDS))
    bert = save_tiny_bert(root / "bert", words)
    config = retrieval_config()
    config["data"]["generate"] = LOG
    config["data"]["features"]["item_title"] = {"type": "text"}
    config["model"]["encoders"]["item_title"] = {"name": "text", "model": str(bert), "max_length": 8, "mode": "frozen"}
    config["model"]["retrieval"]["item"]["fields"] = ITEM_FIELDS
    config["trainer"].update(max_epochs=1, enable_checkpointing=True, limit_train_batches=3)
    assert main(["fit", "--config", str(write_config(root, config)), "--trainer.default_root_dir", str(root),
                 "--test_after_fit", "false"]) == 0
    (checkpoint,) = root.glob("**/epoch=*.ckpt")
    items = pd.read_parquet(quickstart_log(**LOG)).drop_duplicates("item_id")[ITEM_FIELDS].reset_index(drop=True)
    items.loc[NO_TITLE, "item_title"] = None
    items.to_parquet(root / "items.parquet")
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(root / "bundle"), "--items",
                 str(root / "items.parquet"), "--skip-test-metrics"]) == 0
    return load_module(checkpoint, "--ckpt"), items, root / "bundle"


def item_vectors(module, items: pd.DataFrame) -> np.ndarray:
    """The checkpoint's item tower on the items, titles encoded by the training stack's text encoder."""
    side = Side(items.assign(key=range(len(items))), pd.Index(range(len(items))), list(ITEM_FIELDS))
    transform_side(side, module.hparams.preprocessing)
    module.attach_content_encoders({"items": side.table})
    with torch.no_grad():
        return module.model.encode_items(side.table[list(range(len(items)))].features).numpy()


def users(count: int = 4) -> dict[str, list]:
    log = pd.read_parquet(quickstart_log(**LOG)).drop_duplicates("user_id").head(count)
    return {"user_id": log["user_id"].tolist(), "user_segment": log["user_segment"].tolist(),
            "user_age": log["user_age"].tolist(), "clicked_before": [[3, 17, 4], [], [25, "never-seen", 9], None]}


def user_vectors(module, rows: dict[str, list]) -> np.ndarray:
    types = feature_types(module.hparams.preprocessing["features"])
    with torch.no_grad():
        return module.model.encode_users({name: torch.from_numpy(types[name].transform(values))
                                          for name, values in rows.items()}).numpy()


@pytest.mark.parametrize("loader", [load, load_onnx])
def test_the_item_tower_reads_titles_and_the_catalogue_holds_the_checkpoints_vectors(exported, loader):
    module, items, bundle_dir = exported
    bundle = loader(bundle_dir)
    bundle.check()  # golden rows: titles, a repeated and a missing one, a precomputed vector
    inputs = {entry["name"]: entry for entry in bundle.retrieval["towers"]["item"]["inputs"]}
    assert inputs["item_title.present"]["dtype"] == "bool" and inputs["item_title"]["shape"] == ["batch", 16]
    expected = item_vectors(module, items)
    np.testing.assert_allclose(bundle.catalogue_vectors, expected, rtol=1e-5, atol=1e-5)
    rows = {name: [None if pd.isna(value) else value for value in items[name]] for name in ITEM_FIELDS}
    np.testing.assert_allclose(bundle.tower_vectors("item", rows), expected, rtol=1e-5, atol=1e-5)
    # The title's item vector, computed once by the bundle's item encoder, stands in for the text (a
    # blank title is no content, as in training).
    rows["item_title"] = [None if not (title or "").strip() else vector.tolist() for title, vector in
                          zip(rows["item_title"], bundle.encode_items("item_title", rows["item_title"]))]
    np.testing.assert_allclose(bundle.tower_vectors("item", rows), expected, rtol=1e-5, atol=1e-5)
    # Titles move the vectors: without them every item would take the missing vector.
    untitled = item_vectors(module, items.assign(item_title=None))
    assert np.abs(untitled - expected).max() > 1e-3
    np.testing.assert_allclose(bundle.tower_vectors("user", users()), user_vectors(module, users()),
                               rtol=1e-5, atol=1e-5)


def test_recommend_answers_the_checkpoints_top_k_over_titled_items(exported):
    module, items, bundle_dir = exported
    rows = users()
    scores = user_vectors(module, rows) @ item_vectors(module, items).T / module.model.temperature  # [U, N]
    keys = items["item_id"].tolist()
    with TestClient(create_app(load_onnx(bundle_dir))) as client:
        for user in range(len(rows["user_id"])):
            answer = client.post("/recommend", json={"user": {field: values[user] for field, values in rows.items()},
                                                     "k": 12})
            assert answer.status_code == 200, answer.text
            best = np.argsort(-scores[user], kind="stable")[:12]
            assert answer.json()["items"] == [keys[row] for row in best]
            np.testing.assert_allclose(answer.json()["scores"], scores[user][best], rtol=1e-5, atol=1e-5)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["retrieval"]["catalogue"]["items"] == len(items)
    assert set(manifest["content"]["fields"]) == {"item_title"}
