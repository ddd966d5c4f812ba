"""Retrieval bundles whose towers read content: an item tower reading titles (through a frozen BERT) takes
them as the scoring graph takes content (item vector and ``present``), the catalogue's item vectors come
from the checkpoint with its titles, and ``POST /recommend`` answers the checkpoint's exact top K; a user
tower reading audio files reads them, on ``/recommend`` too, only under the service's content root."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import retrieval_config, save_tiny_bert, write_config
from fastapi.testclient import TestClient

from fusionrec.cli import main
from fusionrec.data.synthetic import quickstart_log
from fusionrec.data.synthetic_media import FILLER_WORDS, TITLE_WORDS
from fusionrec.data.keyed import Side, transform_side
from fusionrec.serving import load, load_onnx
from fusionrec.serving.server import create_app
from fusionrec.training.content import attach_content_encoders
from fusionrec.training.checkpoint import load_module

LOG = {"rows": 3000, "users": 150, "items": 90, "seed": 0, "media": True}
ITEM_FIELDS = ["item_id", "item_category", "item_title"]
NO_TITLE = 4  # the catalogue's row whose title is left out: it takes the learned missing vector


def fitted(root, change) -> Path:
    """The checkpoint of ``retrieval_config()`` on the media log, one short epoch, after ``change(config)``."""
    config = retrieval_config()
    config["data"]["generate"] = LOG
    config["trainer"].update(max_epochs=1, enable_checkpointing=True, limit_train_batches=3)
    change(config)
    assert main(["fit", "--config", str(write_config(root, config)), "--trainer.default_root_dir", str(root),
                 "--test_after_fit", "false"]) == 0
    (checkpoint,) = root.glob("**/epoch=*.ckpt")
    return checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(module, items table, bundle with the catalogue's item vectors) of a model whose item tower reads
    the items' titles."""
    root = tmp_path_factory.mktemp("retrieval_content")
    words = sorted({w for levels in TITLE_WORDS.values() for pair in levels for w in pair} | set(FILLER_WORDS))
    bert = save_tiny_bert(root / "bert", words)

    def with_titles(config):
        config["data"]["features"]["item_title"] = {"type": "text"}
        config["model"]["encoders"]["item_title"] = {"name": "text", "model": str(bert), "max_length": 8,
                                                     "mode": "frozen"}
        config["model"]["retrieval"]["item"]["fields"] = ITEM_FIELDS
        # Next-item training cuts each batch to a few rows: the user side's, not the item side's titles.
        config["model"]["tasks"]["click"]["next_item"] = "clicked_before"

    checkpoint = fitted(root, with_titles)
    items = pd.read_parquet(quickstart_log(**LOG)).drop_duplicates("item_id")[ITEM_FIELDS].reset_index(drop=True)
    items.loc[NO_TITLE, "item_title"] = None
    items.to_parquet(root / "items.parquet")
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(root / "bundle"), "--items",
                 str(root / "items.parquet"), "--skip-test-metrics"]) == 0
    return load_module(checkpoint, "--ckpt"), items, root / "bundle"


def tower_vectors(module, side: str, frame: pd.DataFrame) -> np.ndarray:
    """The checkpoint's ``side`` tower on the rows of ``frame``, content encoded by the training stack."""
    model = module.model
    fields = model.user_fields if side == "user" else model.item_fields
    rows = Side(frame.reset_index(drop=True), pd.Index(range(len(frame))), list(fields))
    transform_side(rows, module.hparams.preprocessing)
    attach_content_encoders({name: field for name, field in module.content_fields().items() if name in fields},
                            {side: rows.table})
    with torch.no_grad():
        features = rows.table[list(range(len(frame)))].features
        return (model.encode_users if side == "user" else model.encode_items)(features).numpy()


def users() -> dict[str, list]:
    """Four users of the log with histories: known items, none, an unknown id, null."""
    log = pd.read_parquet(quickstart_log(**LOG)).drop_duplicates("user_id").head(4)
    return {"user_id": log["user_id"].tolist(), "user_segment": log["user_segment"].tolist(),
            "user_age": [None if pd.isna(age) else age for age in log["user_age"]],
            "clicked_before": [[3, 17, 4], [], [25, "never-seen", 9], None]}


def user_vectors(module, rows: dict[str, list]) -> np.ndarray:
    return tower_vectors(module, "user", pd.DataFrame(rows))


@pytest.mark.parametrize("loader", [load, load_onnx])
def test_the_item_tower_reads_titles_and_the_catalogue_holds_the_checkpoints_vectors(exported, loader):
    module, items, bundle_dir = exported
    bundle = loader(bundle_dir)
    bundle.check()  # golden rows: titles, a repeated and a missing one, a precomputed vector
    inputs = {entry["name"]: entry for entry in bundle.retrieval["towers"]["item"]["inputs"]}
    assert inputs["item_title.present"]["dtype"] == "bool" and inputs["item_title"]["shape"] == ["batch", 16]
    expected = tower_vectors(module, "item", items)
    np.testing.assert_allclose(bundle.catalogue_vectors, expected, rtol=1e-5, atol=1e-5)
    rows = {name: [None if pd.isna(value) else value for value in items[name]] for name in ITEM_FIELDS}
    np.testing.assert_allclose(bundle.tower_vectors("item", rows), expected, rtol=1e-5, atol=1e-5)
    # The title's item vector, computed once by the bundle's item encoder, stands in for the text (a
    # blank title is no content, as in training).
    rows["item_title"] = [None if not (title or "").strip() else vector.tolist() for title, vector in
                          zip(rows["item_title"], bundle.encode_items("item_title", rows["item_title"]))]
    np.testing.assert_allclose(bundle.tower_vectors("item", rows), expected, rtol=1e-5, atol=1e-5)
    # Titles move the vectors: without them every item takes the missing vector.
    untitled = bundle.tower_vectors("item", {**rows, "item_title": [None] * len(items)})
    assert np.abs(untitled - expected).max() > 1e-2
    np.testing.assert_allclose(bundle.tower_vectors("user", users()), user_vectors(module, users()),
                               rtol=1e-5, atol=1e-5)


def test_recommend_answers_the_checkpoints_top_k_over_titled_items(exported):
    module, items, bundle_dir = exported
    rows = users()
    scores = user_vectors(module, rows) @ tower_vectors(module, "item", items).T / module.model.temperature  # [U, N]
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


def test_a_user_tower_reading_audio_files_reads_them_under_the_content_root_only(tmp_path_factory):
    """Content on the user side: here each row's clip (the log's item_audio, read by the user tower)."""
    root = tmp_path_factory.mktemp("retrieval_user_content")

    def with_clips(config):
        config["data"]["features"]["item_audio"] = {"type": "audio"}
        config["model"]["encoders"]["item_audio"] = {"name": "audio_cnn", "sample_rate": 8000, "duration": 0.5,
                                                     "n_mels": 16, "channels": 8, "mode": "frozen"}
        config["model"]["retrieval"]["user"]["fields"].append("item_audio")

    module = load_module(fitted(root, with_clips), "--ckpt")
    log = pd.read_parquet(quickstart_log(**LOG))
    items = log.drop_duplicates("item_id")[["item_id", "item_category"]]
    items.to_parquet(root / "items.parquet")
    assert main(["export", "--ckpt", str(next(root.glob("**/epoch=*.ckpt"))), "--out", str(root / "bundle"),
                 "--items", str(root / "items.parquet"), "--skip-test-metrics", "--no-onnx"]) == 0
    bundle = load(root / "bundle")
    bundle.check()  # the golden rows' clips, read by the user tower's item encoder
    clip = Path(log["item_audio"].dropna().iloc[0])
    user = {"user_id": 3, "user_segment": log["user_segment"].tolist()[0], "user_age": 40.0, "clicked_before": [3, 17]}
    expected = tower_vectors(module, "user", pd.DataFrame([{**user, "item_audio": str(clip)}]))
    scores = expected[0] @ tower_vectors(module, "item", items).T / module.model.temperature
    best = np.argsort(-scores, kind="stable")[:5]
    with TestClient(create_app(bundle)) as client:
        refused = client.post("/recommend", json={"user": {**user, "item_audio": clip.name}, "k": 5})
        assert refused.status_code == 422 and "user.item_audio: row 0: this service reads no files" in refused.text
    with TestClient(create_app(bundle, content_root=clip.parent)) as client:
        outside = client.post("/recommend", json={"user": {**user, "item_audio": "../x.wav"}, "k": 5})
        assert outside.status_code == 422 and "is outside --content-root" in outside.text
        answer = client.post("/recommend", json={"user": {**user, "item_audio": clip.name}, "k": 5})
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == items["item_id"].iloc[best].tolist()
    np.testing.assert_allclose(answer.json()["scores"], scores[best], rtol=1e-5, atol=1e-5)
