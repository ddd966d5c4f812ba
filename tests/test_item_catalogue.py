"""data.catalogue: items without training rows get ids, and graph encoders give them a representation
through their content neighbours, served by the bundle; items and users first seen after training fall
back to their other fields. Genres (multi_categorical) as graph content. Bad catalogues."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SMALL_LOG, retrieval_config, small_config, write_config
from fusionrec.cli import main
from fusionrec.data.batches import TensorTable
from fusionrec.data.graph import item_content
from fusionrec.data.preprocessing import Preprocessor
from fusionrec.data.synthetic import generate_impressions
from fusionrec.plugins import get_registry
from fusionrec.serving import load
from fusionrec.training.module import MultiTaskModule

GRAPH = {"user": "user_id", "item": "item_id", "positive": {"column": "click"}}
ITEM_COLUMNS = ["item_id", "item_category", "item_tags", "item_price", "item_embedding"]
NEIGHBOURS = 4


def cold_start_files(root):
    """The small generated log split in time, 10% of its items (the cold ones) left out of training, and
    the catalogue of every item (its first row's item columns)."""
    log = generate_impressions(**SMALL_LOG).sort_values("timestamp", kind="stable").reset_index(drop=True)
    items = log.drop_duplicates("item_id")[ITEM_COLUMNS]
    cold = set(items["item_id"].sample(frac=0.1, random_state=0))
    train, val = log.iloc[:int(len(log) * 0.8)], log.iloc[int(len(log) * 0.8):int(len(log) * 0.9)]
    train = train[~train["item_id"].isin(cold)]
    for name, frame in (("train", train), ("val", val), ("items", items)):
        frame.to_parquet(root / f"{name}.parquet")
    return cold, items


def catalogue_config(root) -> dict:
    config = small_config(trunk={"name": "shared_bottom", "hidden": [32]})
    data = config["data"]
    del data["generate"], data["split"]
    data.update(train=str(root / "train.parquet"), val=str(root / "val.parquet"),
                catalogue={"path": str(root / "items.parquet"), "key": "item_id"})
    config["model"]["encoders"] = {field: {"name": "lightgcn", "graph": dict(GRAPH), "layers": 2}
                                   for field in ("user_id", "item_id")}
    # The item-item graph of the items' vectors and of their tags (a multi_categorical feature).
    config["model"]["encoders"]["item_id"].update(content={"item_embedding": 1.0, "item_tags": 0.5},
                                                  neighbours=NEIGHBOURS)
    config["trainer"].update(max_epochs=1, enable_checkpointing=True, logger=True, default_root_dir=str(root))
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    cold, items = cold_start_files(root)
    assert main(["fit", "--config", str(write_config(root, catalogue_config(root))), "--test_after_fit", "false"]) == 0
    (checkpoint,) = root.glob("lightning_logs/version_0/checkpoints/epoch=*.ckpt")
    return root, str(checkpoint), cold, items


def test_catalogue_items_without_training_rows_get_ids_and_content_neighbours(trained):
    _, checkpoint, cold, items = trained
    module = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu")
    vocabulary = module.hparams.preprocessing["features"]["item_id"]["vocabulary"]
    ids = {token: position + 2 for position, token in enumerate(vocabulary)}  # 0, 1: padding, out of vocabulary
    assert {str(item) for item in cold} <= set(ids)  # their own ids, not the out-of-vocabulary one

    item_edges = module.model.encoders["item_id"].propagation.item_edges
    neighbours = {}
    for source, target in item_edges.T.tolist():
        neighbours.setdefault(source, set()).add(target)
    vectors = np.stack(items["item_embedding"].to_numpy()).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    catalogue_ids = np.array([ids[str(item)] for item in items["item_id"]])
    for item in cold:
        row = int(np.flatnonzero(items["item_id"].to_numpy() == item)[0])
        similarity = unit @ unit[row]
        similarity[row] = -np.inf
        nearest = set(catalogue_ids[np.argsort(-similarity)[:NEIGHBOURS]].tolist())
        # The vectors' kNN graph reaches it; the tags' graph adds neighbours of its own.
        assert nearest <= neighbours[ids[str(item)]]
        assert len(neighbours[ids[str(item)]]) > NEIGHBOURS


def test_the_bundle_serves_cold_items_and_new_items_and_users_fall_back_to_their_features(trained):
    root, checkpoint, cold, items = trained
    bundle = root / "bundle"
    assert main(["export", "--ckpt", checkpoint, "--out", str(bundle), "--skip-test-metrics", "--no-onnx"]) == 0
    scoring = load(bundle)
    scoring.check()
    log = pd.read_parquet(root / "val.parquet")
    rows = log[log["item_id"].isin(cold)].head(4).reset_index(drop=True)
    # The same rows with an item never seen, then with a user never seen; then the last of each with
    # other content (12), and other attributes (13).
    rows = pd.concat([rows, rows.assign(item_id=-1), rows.assign(user_id=-1)], ignore_index=True)
    rows = pd.concat([rows, rows.iloc[[7, 11]]], ignore_index=True)
    rows.at[12, "item_embedding"] = rows.at[12, "item_embedding"] * -1.0
    rows.loc[13, ["user_age", "user_segment"]] = [rows.loc[13, "user_age"] + 30, (rows.loc[13, "user_segment"] + 1) % 5]

    module = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    table = Preprocessor(module.hparams.preprocessing).transform(rows, get_registry(), with_labels=False)
    with torch.no_grad():
        outputs = module(table[list(range(len(rows)))].features)
    scores = scoring.score({name: rows[name].tolist() for name in scoring.manifest["preprocessing"]})
    for task, head in module.model.heads.items():  # cold and new items alike: the checkpoint's scores
        np.testing.assert_allclose(scores[task], head.predict(outputs[task]).numpy(), atol=1e-5, rtol=0)
    click = scores["click"]
    # A cold item has a representation of its own: the new item with its content scores otherwise...
    assert not np.allclose(click[:4], click[4:8])
    # ...and a new item is scored from its content: other content, another score.
    assert click[12] != pytest.approx(click[7], abs=1e-6)
    # A new user from their attributes likewise.
    assert click[13] != pytest.approx(click[11], abs=1e-6)


def test_multi_categorical_content_is_a_multi_hot_and_the_catalogue_comes_first():
    # Items 2, 3, 4; tags ids per row (0 padding, 1 out of vocabulary).
    train = TensorTable({"item_id": torch.tensor([2, 3, 3]), "tags": torch.tensor([[2, 3], [4, 0], [2, 0]]),
                         "vector": torch.tensor([[1.0, 0], [0, 1], [5, 5]])}, {}, 3)
    catalogue = TensorTable({"item_id": torch.tensor([4, 3]), "tags": torch.tensor([[1, 0], [3, 4]])}, {}, 2)
    vectors, present = item_content([catalogue, train], "item_id", {"tags": 5, "vector": 0}, 5,
                                    "model.encoders.item_id")
    expected = torch.zeros(5, 5)
    expected[2, [2, 3]] = 1  # from the training split
    expected[3, [3, 4]] = 1  # the catalogue's row, not the training split's
    torch.testing.assert_close(vectors["tags"], expected)
    assert present["tags"].tolist() == [False, False, True, True, False]  # item 4's only tag is unknown
    # The catalogue has no vector column: the training split's first row of each item.
    torch.testing.assert_close(vectors["vector"][2:4], torch.tensor([[1.0, 0], [0, 1]]))
    assert present["vector"].tolist() == [False, False, True, True, False]


@pytest.mark.parametrize("change, message", [
    (lambda c, root: c["data"].update(catalogue={"path": str(root / "items.parquet")}), "data.catalogue: expected"),
    (lambda c, root: c["data"]["catalogue"].update(key="movie_id"), "data.catalogue key: no column 'movie_id'"),
    (lambda c, root: c["data"]["catalogue"].update(path=str(root / "repeated.parquet")),
     "column 'item_id': id '5' appears more than once"),
    (lambda c, root: c["data"]["catalogue"].update(path=str(root / "other.parquet"), key="sku"),
     "has none of the features (data.features) as a column"),
    (lambda c, root: c["data"]["catalogue"].update(path=str(root / "missing.parquet")), "missing.parquet"),
])
def test_bad_catalogues_fail_with_one_line(tmp_path, capsys, change, message):
    _, items = cold_start_files(tmp_path)
    pd.concat([items, items[items["item_id"] == 5]]).to_parquet(tmp_path / "repeated.parquet")
    pd.DataFrame({"sku": [1, 2], "colour": ["red", "blue"]}).to_parquet(tmp_path / "other.parquet")
    config = catalogue_config(tmp_path)
    change(config, tmp_path)
    assert main(["fit", "--config", str(write_config(tmp_path, config))]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_a_retrieval_model_reads_its_content_graph_outside_the_towers(tmp_path):
    """The item tower reads the LightGCN item id alone; the tags and vectors build the item graph only.
    The bundle's catalogue vectors give each cold item its own vector, from its neighbours."""
    cold, items = cold_start_files(tmp_path)
    config = retrieval_config()
    data = config["data"]
    del data["generate"], data["split"]
    data.update({key: catalogue_config(tmp_path)["data"][key] for key in ("train", "val", "catalogue")})
    data["features"].update(item_tags={"type": "multi_categorical", "separator": "|", "max_length": 4},
                            item_embedding={"type": "vector"})
    del data["features"]["item_category"]
    config["model"]["encoders"].update({field: {"name": "lightgcn", "graph": dict(GRAPH), "layers": 2}
                                        for field in ("user_id", "item_id")})
    config["model"]["encoders"]["item_id"].update(content={"item_tags": 1.0, "item_embedding": 1.0}, neighbours=3)
    config["model"]["retrieval"]["item"]["fields"] = ["item_id"]
    config["trainer"].update(max_epochs=1, enable_checkpointing=True, logger=True, default_root_dir=str(tmp_path))
    assert main(["fit", "--config", str(write_config(tmp_path, config)), "--test_after_fit", "false"]) == 0
    (checkpoint,) = tmp_path.glob("lightning_logs/version_0/checkpoints/epoch=*.ckpt")
    bundle = tmp_path / "bundle"
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(bundle), "--skip-test-metrics", "--no-onnx",
                 "--items", str(tmp_path / "items.parquet")]) == 0
    scoring = load(bundle)
    scoring.check()
    vectors = scoring.tower_vectors("item", {"item_id": sorted(cold)})
    assert len(np.unique(vectors.round(5), axis=0)) == len(cold)  # not the one out-of-vocabulary vector
    unknown = scoring.tower_vectors("item", {"item_id": [-1, -2]})
    np.testing.assert_allclose(unknown[0], unknown[1])
