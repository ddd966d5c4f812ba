"""Reading, splitting, joining and fitted preprocessing of each feature type."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fusionrec.data.batches import batch_loader
from fusionrec.data.preprocessing import OUT_OF_VOCABULARY, PADDING, Preprocessor
from fusionrec.data.reading import join_side_tables, read_table, split_table
from fusionrec.data.schema import parse_features, parse_tasks
from fusionrec.errors import ConfigError, DataError
from fusionrec.plugins import get_registry


def fitted(train: pd.DataFrame, features: dict, tasks: dict | None = None) -> Preprocessor:
    registry = get_registry()
    return Preprocessor.fit(train, parse_features(features), parse_tasks(tasks or {"y": {"head": "binary"}}, registry),
                            registry)


TRAIN = pd.DataFrame({
    "user": ["a", "a", "b", "c", "a", "b"],
    "genres": ["Action|Comedy", "Comedy", "", None, "Drama|Action|Comedy", "Action"],
    "age": [20.0, None, 40.0, 30.0, 20.0, 40.0],
    "vec": [[1.0, 0.0], [0.0, 1.0], None, [1.0, 1.0], [0.5, 0.5], [0.0, 0.0]],
    "y": [0, 1, 0, 1, 1, 0],
})


def test_categorical_vocabulary_honours_min_count_and_maps_unseen_ids_to_the_oov_bucket():
    pre = fitted(TRAIN, {"user": {"type": "categorical", "min_count": 2}})
    assert pre.state["features"]["user"]["vocabulary"] == ["a", "b"]  # by count, "c" seen once
    table = pre.transform(pd.DataFrame({"user": ["a", "b", "c", "zzz", None], "y": [0] * 5}), get_registry())
    assert table.features["user"].tolist() == [2, 3, OUT_OF_VOCABULARY, OUT_OF_VOCABULARY, OUT_OF_VOCABULARY]


def test_integer_and_string_ids_share_tokens():
    pre = fitted(TRAIN.assign(user=[7, 7, 8, 9, 7, 8]), {"user": {"type": "categorical"}})
    as_strings = pre.transform(pd.DataFrame({"user": ["7", "8"], "y": [0, 1]}), get_registry())
    as_floats = pre.transform(pd.DataFrame({"user": [7.0, 8.0, None], "y": [0, 1, 0]}), get_registry())
    assert as_strings.features["user"].tolist() == [2, 3]
    assert as_floats.features["user"].tolist() == [2, 3, OUT_OF_VOCABULARY]


def test_multi_categorical_is_padded_and_truncated():
    pre = fitted(TRAIN, {"genres": {"type": "multi_categorical", "max_length": 2}})
    vocabulary = pre.state["features"]["genres"]["vocabulary"]
    assert vocabulary == ["Action", "Comedy", "Drama"]
    ids = pre.transform(TRAIN, get_registry()).features["genres"]
    assert ids.shape == (6, 2)
    assert ids[0].tolist() == [2, 3] and ids[1].tolist() == [3, PADDING]
    assert ids[2].tolist() == [PADDING, PADDING] and ids[3].tolist() == [PADDING, PADDING]
    assert ids[4].tolist() == [4, 2]  # truncated to max_length


def test_list_cells_work_like_separated_strings():
    lists = TRAIN.assign(genres=[["Action", "Comedy"], ["Comedy"], [], None, ["Drama"], ["Action"]])
    pre = fitted(lists, {"genres": {"type": "multi_categorical", "max_length": 3}})
    assert pre.transform(lists, get_registry()).features["genres"][0].tolist() == [2, 3, PADDING]


def test_numeric_is_standardised_with_training_statistics_and_flags_missing_values():
    pre = fitted(TRAIN, {"age": {"type": "numeric"}})
    stats = pre.state["features"]["age"]
    assert stats["mean"] == pytest.approx(30.0) and stats["std"] == pytest.approx(np.std([20, 40, 30, 20, 40]))
    values = pre.transform(pd.DataFrame({"age": [30.0, None, 50.0], "y": [0, 0, 1]}), get_registry()).features["age"]
    assert values[:, 1].tolist() == [0.0, 1.0, 0.0]
    assert values[0, 0] == pytest.approx(0.0) and values[1, 0] == 0.0
    assert values[2, 0] == pytest.approx(20 / stats["std"])


def test_vectors_are_stacked_and_a_wrong_length_is_reported():
    pre = fitted(TRAIN, {"vec": {"type": "vector"}})
    vectors = pre.transform(TRAIN, get_registry()).features["vec"]
    assert vectors.shape == (6, 2) and vectors[2].tolist() == [0.0, 0.0]
    with pytest.raises(DataError, match="column 'vec': row 1: expected a list of 2 numbers"):
        pre.transform(pd.DataFrame({"vec": [[1.0, 2.0], [1.0, 2.0, 3.0]], "y": [0, 1]}), get_registry())


def test_labels_use_the_heads_rules():
    registry = get_registry()
    tasks = {"liked": {"head": "binary", "label": "rating", "threshold": 4},
             "rating": {"head": "regression"}, "kind": {"head": "multiclass"},
             "genres": {"head": "multilabel", "label": "tags"}}
    train = pd.DataFrame({"u": ["a", "b", "c"], "rating": [5, 3, 4], "kind": ["x", "y", "x"],
                          "tags": ["p|q", "q", ""]})
    pre = Preprocessor.fit(train, parse_features({"u": {"type": "categorical"}}), parse_tasks(tasks, registry),
                           registry)
    labels = pre.transform(train, registry).labels
    assert labels["liked"].tolist() == [1.0, 0.0, 1.0]
    assert labels["rating"].tolist() == [5.0, 3.0, 4.0]
    assert labels["kind"].tolist() == [0, 1, 0]
    assert labels["genres"].tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    with pytest.raises(DataError, match="'z' at row 1 is a class the training split never shows"):
        pre.transform(train.assign(kind=["x", "z", "y"]), registry)


def test_time_split_orders_by_time_and_random_split_is_seeded():
    frame = pd.DataFrame({"t": [5, 1, 4, 2, 3, 9, 8, 7, 6, 0], "v": range(10)})
    train, val, test = split_table(frame, "time", [0.6, 0.2, 0.2], "data.split", "t")
    assert train["t"].tolist() == [0, 1, 2, 3, 4, 5] and val["t"].tolist() == [6, 7] and test["t"].tolist() == [8, 9]
    first = split_table(frame, "random", [0.5, 0.3, 0.2], "data.split", seed=3)
    again = split_table(frame, "random", [0.5, 0.3, 0.2], "data.split", seed=3)
    assert [len(p) for p in first] == [5, 3, 2]
    assert all(a.equals(b) for a, b in zip(first, again))
    assert sorted(pd.concat(first)["v"]) == list(range(10))
    with pytest.raises(ConfigError, match="data.split.ratios"):
        split_table(frame, "random", [0.5, 0.6, 0.2], "data.split")


def test_side_tables_join_by_key(tmp_path):
    items = pd.DataFrame({"item": ["i1", "i2"], "genre": ["x", "y"]})
    items.to_csv(tmp_path / "items.csv", index=False)
    rows = pd.DataFrame({"item": ["i2", "i1", "i3"], "click": [1, 0, 1]})
    joined = join_side_tables(rows, [{"path": str(tmp_path / "items.csv"), "key": "item"}], "data.joins")
    assert joined["genre"].iloc[:2].tolist() == ["y", "x"]
    assert joined["genre"].isna().tolist() == [False, False, True]


def test_recbole_atomic_files_drop_the_type_suffix(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\trating:float\n1\t5\n2\t3\n")
    assert read_table(path, "data.path").columns.tolist() == ["user_id", "rating"]


def test_batches_are_slices_of_the_split_tensors():
    pre = fitted(TRAIN, {"user": {"type": "categorical"}, "age": {"type": "numeric"}})
    table = pre.transform(TRAIN, get_registry())
    batches = list(batch_loader(table, batch_size=4, shuffle=True))
    assert [len(b) for b in batches] == [4, 2]
    index = torch.cat([b.index for b in batches])
    assert sorted(index.tolist()) == list(range(6))
    for batch in batches:
        assert torch.equal(batch.features["user"], table.features["user"][batch.index])
        assert torch.equal(batch.labels["y"], table.labels["y"][batch.index])


def test_numeric_na_values_count_as_missing_instead_of_failing():
    train = pd.DataFrame({"year": ["1995", "unknown", "2001"], "y": [0, 1, 0]})
    with pytest.raises(DataError, match="column 'year': row 1: expected a number, got 'unknown'"):
        fitted(train, {"year": {"type": "numeric"}})
    pre = fitted(train, {"year": {"type": "numeric", "na_values": ["unknown"]}})
    assert pre.state["features"]["year"]["mean"] == pytest.approx(1998.0)
    assert pre.transform(train, get_registry()).features["year"][:, 1].tolist() == [0.0, 1.0, 0.0]


def test_numeric_na_values_match_an_integer_columns_values_as_written():
    """na_values are strings matched against each value's own: -1 in an integer column (and in a
    request's JSON) is "-1"; -1.0 in a float column is "-1.0"."""
    from fusionrec.serving.features import FeatureEncoder

    train = pd.DataFrame({"age": [-1, 20, 40], "score": [-1.0, 2.0, 4.0], "y": [0, 1, 0]})
    pre = fitted(train, {"age": {"type": "numeric", "na_values": [-1]},
                         "score": {"type": "numeric", "na_values": ["-1"]}})
    assert pre.state["features"]["age"]["mean"] == pytest.approx(30.0)
    features = pre.transform(train, get_registry()).features
    assert features["age"][:, 1].tolist() == [1.0, 0.0, 0.0]
    assert features["score"][:, 1].tolist() == [0.0, 0.0, 0.0]
    encode = FeatureEncoder({name: {**entry, "implementation": "fusionrec_features.tabular:Numeric"}
                             for name, entry in pre.state["features"].items()})
    served = encode({"age": [-1, 20, 40], "score": [-1.0, 2.0, 4.0]})
    np.testing.assert_array_equal(served["age"], features["age"].numpy())
    np.testing.assert_array_equal(served["score"], features["score"].numpy())
