"""The sequence feature type and histories built from the log (docs/history.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fusionrec.data.history import build_histories
from fusionrec.errors import ConfigError, DataError
from fusionrec.features.base import OUT_OF_VOCABULARY, PADDING, FeatureValueError
from fusionrec.features.values import MAX_PARTS
from fusionrec_features.sequence import SequenceFeature
from fusionrec_features.tabular import Categorical

KEY = "data.features.watched"


def fitted(kind_type, name, options, values, others=()):
    kind = kind_type(name, kind_type.check_options(options, f"data.features.{name}"))
    features = {name: kind, **{other.name: other for other in others}}
    kind.link(features)
    kind = kind_type(name, kind.fitted(kind.merge([kind.fit(values)])))
    kind.link({**features, name: kind})
    return kind


def own_sequence(values, **options) -> SequenceFeature:
    return fitted(SequenceFeature, "watched", {"max_length": 3, **options}, np.array(values, dtype=object))


# --- the type: lists, strings, requests ---

def test_transform_keeps_the_most_recent_left_padded_and_reads_lists_and_strings_alike():
    kind = own_sequence([["a", "b"], "b|c", [7]])
    ids = dict(zip(kind.state["vocabulary"], range(2, 10)))
    out = kind.transform([["a", "b", "c", "7"], "a|b", None, [], ["never-seen"], [7.0], ["7"], [np.nan]])
    assert out.shape == (8, 3, 1) and out.dtype == np.int64
    rows = out[..., 0].tolist()
    assert rows[0] == [ids["b"], ids["c"], ids["7"]]  # the last 3 of 4, oldest first
    assert rows[1] == [PADDING, ids["a"], ids["b"]]
    assert rows[2] == rows[3] == [PADDING] * 3  # null and [] are empty
    assert rows[4] == [PADDING, PADDING, OUT_OF_VOCABULARY]
    assert rows[5] == rows[6] == [PADDING, PADDING, ids["7"]]  # 7, 7.0 and "7" are one id
    assert rows[7] == [PADDING, PADDING, OUT_OF_VOCABULARY]  # a null element: missing, like an id field's
    # A numpy column (as read from Parquet) encodes as the same lists do.
    column = np.empty(2, dtype=object)
    column[:] = [np.array(["a", "b", "c", "7"]), None]
    np.testing.assert_array_equal(kind.transform(column), out[[0, 2]])


@pytest.mark.parametrize("cell, message", [
    (5, "expected a list of ids or a '|'-separated string, got 5"),
    ({"id": 1}, "expected a list of ids"),
    (True, "expected a list of ids"),
    ([["a"]], "in the list: expected one id (a string or a number), got ['a']"),
    ([float("inf")], "in the list: inf is not an id"),
])
def test_a_cell_that_is_no_list_of_ids_is_refused_with_its_row(cell, message):
    kind = own_sequence([["a"]])
    with pytest.raises(FeatureValueError, match=None) as error:
        kind.transform([["a"], None, cell])
    assert error.value.row == 2 and message in str(error.value)


def test_request_lists_beyond_max_parts_are_refused_and_longer_than_max_length_truncated():
    kind = own_sequence([["a", "b"]])
    longest = ["a"] * (MAX_PARTS - 1) + ["b"]
    kind.check_request([longest, None])
    assert kind.transform([longest])[0, :, 0].tolist() == kind.transform([["a", "a", "b"]])[0, :, 0].tolist()
    with pytest.raises(FeatureValueError, match=f"a list of {MAX_PARTS + 1} elements, more than {MAX_PARTS}") as error:
        kind.check_request([None, ["a"] * (MAX_PARTS + 1)])
    assert error.value.row == 1
    with pytest.raises(FeatureValueError, match="more than"):
        kind.check_request(["|".join(["a"] * (MAX_PARTS + 1))])


def test_partial_fits_merge_into_the_whole_fit_with_min_count_and_max_size():
    options = SequenceFeature.check_options({"min_count": 2, "max_size": 2}, KEY)
    kind = SequenceFeature("watched", options)
    chunks = [np.array([["a", "b"], "b|c"], dtype=object), np.array([["c", "c", "a"], None, "b"], dtype=object)]
    merged = kind.fitted(kind.merge([kind.fit(chunk) for chunk in chunks]))
    whole = kind.fitted(kind.fit(np.concatenate(chunks)))
    assert merged == whole and merged["vocabulary"] == ["b", "c"]  # a, b, c seen 2, 3, 3 times


def test_side_fields_and_a_shared_vocabulary_use_those_features_ids():
    items = fitted(Categorical, "item_id", {}, np.array(["i1", "i2", "i3"], dtype=object))
    genres = fitted(Categorical, "genre", {"hash_buckets": 10}, np.array(["g"], dtype=object))
    kind = fitted(SequenceFeature, "watched", {"max_length": 2, "vocabulary": "item_id", "side": ["genre"]},
                  np.array([None], dtype=object), [items, genres])
    assert "vocabulary" not in kind.state and kind.state["shares"] == "item_id"
    out = kind.transform([[["i1", "x"], ["i3", "y"], ["zz", None]], None])
    np.testing.assert_array_equal(out[0, :, 0], items.transform(["i3", "zz"]))
    np.testing.assert_array_equal(out[0, :, 1], genres.transform(["y", None]))
    assert out[0, 1, 0] == OUT_OF_VOCABULARY and out[1].tolist() == [[PADDING, PADDING]] * 2
    info = kind.field_info()
    assert (info.type, info.cardinality, info.width) == ("sequence", items.field_info().cardinality, 2)
    assert info.extra["parts"] == [{"name": "item_id", "cardinality": 5, "shares": "item_id"},
                                   {"name": "genre", "cardinality": 12, "shares": "genre"}]
    with pytest.raises(FeatureValueError, match=r"element 0 of the kept list: expected \[id, genre\]") as error:
        kind.transform([None, [["i1"]]])
    assert error.value.row == 1
    with pytest.raises(FeatureValueError, match="got the string"):
        kind.transform(["i1|i2"])
    examples = kind.example_values(np.random.default_rng(0), 6)
    assert kind.transform(examples).shape == (6, 2, 2)


@pytest.mark.parametrize("options, message", [
    ({"max_length": 0}, f"{KEY}.max_length: expected a whole number from 1 to {MAX_PARTS}, got 0"),
    ({"max_length": MAX_PARTS + 1}, f"{KEY}.max_length"),
    ({"lenght": 3}, f"{KEY}: unknown option(s) 'lenght' for a sequence feature"),
    ({"vocabulary": "item_id", "min_count": 2}, "vocabulary shares another feature's ids, so min_count"),
    ({"side": "genre"}, f"{KEY}.side: expected a list of categorical feature names"),
    ({"history": {"user": "u", "time": "t"}}, f"{KEY}.history.item: required, the name of a column"),
    ({"history": {"user": "u", "time": "t", "item": "i", "when": 1}}, f"{KEY}.history: unknown key(s) 'when'"),
    ({"history": {"user": "u", "time": "t", "item": "i", "positive": "rating"}}, f"{KEY}.history.positive: expected"),
])
def test_bad_options_name_their_key(options, message):
    with pytest.raises(ConfigError) as error:
        SequenceFeature.check_options(options, KEY)
    assert message in str(error.value)


def test_link_refuses_a_shared_feature_that_is_not_categorical():
    kind = SequenceFeature("watched", SequenceFeature.check_options({"side": ["price"]}, KEY))
    with pytest.raises(ConfigError, match=f"{KEY}.side: 'price' must be a categorical feature \\(no such feature\\)"):
        kind.link({"watched": kind})


# --- histories built from the log ---

def random_log(rng: np.random.Generator, rows: int) -> dict[str, pd.DataFrame]:
    """Three splits in no particular time order, with many ties in time, and a predict file."""
    frame = pd.DataFrame({"user": rng.integers(0, 12, rows), "timestamp": rng.integers(0, 30, rows),
                          "item_id": rng.integers(0, 40, rows), "genre": rng.choice(["a", "b", "c", None], rows),
                          "rating": rng.integers(1, 6, rows).astype(float)})
    frame.loc[rng.random(rows) < 0.05, "rating"] = np.nan
    parts = np.split(rng.permutation(rows), [rows // 2, 3 * rows // 4])
    splits = {name: frame.iloc[np.sort(part)] for name, part in zip(("train", "val", "test"), parts)}
    splits["predict"] = pd.DataFrame({"user": rng.integers(0, 14, 30), "timestamp": rng.integers(0, 35, 30)})
    for name, split in splits.items():
        split.attrs["source"] = f"log.csv ({name} split)"
    return splits


def brute_force(splits: dict[str, pd.DataFrame], kind: SequenceFeature, positive_min: float | None) -> dict:
    """Every row's history read off the log one row at a time: the raw lists, through ``transform``."""
    log = pd.concat([split for name, split in splits.items() if name != "predict"], ignore_index=True)
    log["position"] = np.arange(len(log))
    if positive_min is not None:
        log = log[log["rating"] >= positive_min]
    expected = {}
    for name, split in splits.items():
        lists = []
        for user, time in zip(split["user"], split["timestamp"]):
            earlier = log[(log["user"] == user) & (log["timestamp"] < time)].sort_values(["timestamp", "position"])
            lists.append([[item, genre] for item, genre in zip(earlier["item_id"], earlier["genre"])]
                         if kind.state["side"] else list(earlier["item_id"]))
        expected[name] = kind.transform(lists)
    return expected


@pytest.mark.parametrize("seed", [0, 1])
def test_built_histories_equal_the_raw_lists_of_strictly_earlier_positive_events(seed):
    """The leakage test: one later event, the row's own event or one at the same moment slipping into a
    history (or one earlier event missing) makes the gathered tensor differ from the brute-force reading."""
    splits = random_log(np.random.default_rng(seed), 400)
    train = splits["train"]
    items = fitted(Categorical, "item_id", {}, train["item_id"].to_numpy())
    genres = fitted(Categorical, "genre", {}, train["genre"].to_numpy())
    options = {"max_length": 4, "vocabulary": "item_id", "side": ["genre"],
               "history": {"user": "user", "time": "timestamp", "item": "item_id",
                           "positive": {"column": "rating", "min": 4}}}
    kind = fitted(SequenceFeature, "watched", options, train["item_id"].to_numpy(), [items, genres])
    columns = build_histories(splits, kind, KEY)
    expected = brute_force(splits, kind, positive_min=4)
    for name in splits:
        gathered = columns[name].values()
        assert gathered.dtype == torch.int64 and gathered.shape == (len(splits[name]), 4, 2)
        np.testing.assert_array_equal(gathered.numpy(), expected[name], err_msg=name)
    assert (expected["test"][..., 0] > OUT_OF_VOCABULARY).any() and (expected["val"][..., 0] == PADDING).any()
    # A batch gathers the very rows of the whole column, in the batch's order.
    index = torch.tensor([5, 0, 5, len(splits["val"]) - 1])
    np.testing.assert_array_equal(columns["val"].batch(index).numpy(), expected["val"][index.numpy()])


def test_an_own_vocabulary_fits_on_the_history_item_column_and_counts_every_event_without_positive():
    splits = random_log(np.random.default_rng(2), 300)
    options = {"max_length": 6, "history": {"user": "user", "time": "timestamp", "item": "item_id"}}
    kind = fitted(SequenceFeature, "watched", options, splits["train"]["item_id"].to_numpy())
    assert kind.fit_column == "item_id"
    assert sorted(kind.state["vocabulary"]) == sorted(map(str, splits["train"]["item_id"].unique()))
    columns = build_histories(splits, kind, KEY)
    expected = brute_force(splits, kind, positive_min=None)
    for name in splits:
        np.testing.assert_array_equal(columns[name].values().numpy(), expected[name], err_msg=name)


def test_a_history_holds_only_earlier_events_never_the_rows_own_a_tie_or_a_later_one():
    log = pd.DataFrame({"user": ["u", "u", "u", "u", "v", "u"], "timestamp": [1, 2, 2, 3, 0, 1],
                        "item_id": ["a", "b", "c", "d", "e", "f"], "rating": [5, 5, 5, 5, 5, 1]})
    options = {"max_length": 3, "history": {"user": "user", "time": "timestamp", "item": "item_id",
                                            "positive": {"column": "rating", "min": 4}}}
    splits = {"train": log.iloc[[3, 1]], "val": log.iloc[[0, 2, 4, 5]]}  # the later event in train
    kind = fitted(SequenceFeature, "watched", options, splits["train"]["item_id"].to_numpy())
    columns = build_histories(splits, kind, KEY)

    def ids(*tokens):
        return kind.transform([list(tokens)])[0, :, 0].tolist()

    # d at 3 sees a, b and c (a and c unknown to the training vocabulary: out of vocabulary); b at 2 sees a.
    assert ids("a", "b", "c") == [OUT_OF_VOCABULARY, kind.vocabulary.ids(["b"])[0], OUT_OF_VOCABULARY]
    assert columns["train"].values()[..., 0].tolist() == [ids("a", "b", "c"), ids("a")]
    # a at 1: nothing before; c at 2 sees a only (b is at the same time); f at 1 is negative (rating 1).
    assert columns["val"].values()[..., 0].tolist() == [ids(), ids("a"), ids(), ids()]


def test_iso_date_strings_order_like_the_dates_and_predict_rows_get_the_logs_events():
    log = pd.DataFrame({"user": [1, 1, 1], "time": ["2024-01-02T10:00:00", "2023-12-31", "2024-01-02T09:00:00Z"],
                        "item_id": ["late", "first", "middle"]})
    options = {"max_length": 5, "history": {"user": "user", "time": "time", "item": "item_id"}}
    kind = fitted(SequenceFeature, "watched", options, log["item_id"].to_numpy())
    predict = pd.DataFrame({"user": [1, 1], "time": ["2024-01-02T09:30:00", "2030-01-01"]})  # no item column
    columns = build_histories({"train": log, "predict": predict}, kind, KEY)
    assert columns["predict"].values()[..., 0].tolist() == [
        kind.transform([["first", "middle"]])[0, :, 0].tolist(),
        kind.transform([["first", "middle", "late"]])[0, :, 0].tolist()]


def test_date_times_of_different_units_and_date_objects_order_as_the_moments_they_are():
    """Parquet gives datetime64[ms] (and date32 as datetime.date objects), parsed strings datetime64[us]:
    ordered by their int64 values, a row in 2000 would see an event of 2024."""
    import datetime

    options = {"max_length": 5, "history": {"user": "user", "time": "time", "item": "item_id"}}
    train = pd.DataFrame({"user": [1, 1], "item_id": ["y2024", "y1999"],
                          "time": pd.to_datetime(["2024-01-01", "1999-06-01"]).as_unit("ms")})
    kind = fitted(SequenceFeature, "watched", options, train["item_id"].to_numpy())
    val = pd.DataFrame({"user": [1, 1], "time": ["2000-01-01", "2024-01-01T00:00:01+00:00"], "item_id": ["a", "b"]})
    test = pd.DataFrame({"user": [1], "time": pd.Series([datetime.date(2023, 12, 31)], dtype=object),
                         "item_id": ["c"]})
    columns = build_histories({"train": train, "val": val, "test": test}, kind, KEY)
    assert columns["val"].values()[..., 0].tolist() == [
        kind.transform([["y1999"]])[0, :, 0].tolist(),
        kind.transform([["y1999", "a", "c", "y2024"]])[0, :, 0].tolist()]
    assert columns["test"].values()[..., 0].tolist() == [kind.transform([["y1999", "a"]])[0, :, 0].tolist()]
    mixed = test.assign(time=pd.Series([datetime.date(2023, 12, 31), 5], dtype=object).iloc[:1])
    mixed = pd.concat([mixed, mixed.assign(time=pd.Series([5], dtype=object))], ignore_index=True)
    mixed.attrs["source"] = "log.csv"
    with pytest.raises(DataError, match="column 'time' of log.csv: mixes dates and numbers, 5 at row 1"):
        build_histories({"train": train, "test": mixed}, kind, KEY)


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns="user"), f"{KEY}.history.user: no column 'user' in log.csv"),
    (lambda f: f.drop(columns="timestamp"), f"{KEY}.history.time: no column 'timestamp'"),
    (lambda f: f.drop(columns="item_id"), f"{KEY}.history.item: no column 'item_id'"),
    (lambda f: f.drop(columns="rating"), f"{KEY}.history.positive.column: no column 'rating'"),
    (lambda f: f.assign(timestamp=[1, "2024-01-01", 3]),
     f"{KEY}.history.time: column 'timestamp' of log.csv: mixes strings and numbers, 1 at row 0"),
    (lambda f: f.assign(timestamp=["1", "soon", "3"]),
     "'soon' at row 1 is neither a number nor an ISO 8601 date/time"),
    (lambda f: f.assign(timestamp=[1.0, np.nan, 3.0]), "row 1 has no time (1 such row(s))"),
    (lambda f: f.assign(rating=["5", "great", "1"]), f"{KEY}.history.positive.column: column 'rating' of log.csv "
                                                     f"holds a non-number, 'great' at row 1"),
])
def test_bad_history_input_is_one_data_error_naming_the_key_and_row(change, message):
    log = pd.DataFrame({"user": [1, 1, 2], "timestamp": [1, 2, 3], "item_id": ["a", "b", "c"], "rating": [5, 4, 1]})
    options = {"history": {"user": "user", "time": "timestamp", "item": "item_id", "positive": {"column": "rating"}}}
    kind = fitted(SequenceFeature, "watched", options, log["item_id"].to_numpy())
    frame = change(log)
    frame.attrs["source"] = "log.csv"
    with pytest.raises(DataError) as error:
        build_histories({"train": frame}, kind, KEY)
    assert message in str(error.value)


def test_a_history_column_stores_the_same_bytes_per_row_whatever_its_max_length():
    splits = random_log(np.random.default_rng(3), 400)

    def stored_bytes(max_length: int) -> int:
        options = {"max_length": max_length, "history": {"user": "user", "time": "timestamp", "item": "item_id"}}
        kind = fitted(SequenceFeature, "watched", options, splits["train"]["item_id"].to_numpy())
        column = build_histories(splits, kind, KEY)["train"]
        assert column.values().shape[1] == max_length
        return sum(t.element_size() * t.nelement() for t in (column.events, column.ends, column.counts))

    assert stored_bytes(2) == stored_bytes(500)


# --- through the data module and the model ---

HISTORY = {"type": "sequence", "max_length": 8, "vocabulary": "item_id", "side": ["item_category"],
           "history": {"user": "user_id", "time": "timestamp", "item": "item_id", "positive": {"column": "click"}}}


def history_config(**trainer):
    from conftest import small_config

    config = small_config(trainer={"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1, **trainer})
    config["data"]["features"]["watched"] = HISTORY
    return config


def test_fit_test_and_predict_with_a_built_history_and_the_default_encoder(tmp_path, one_thread):
    from lightning.pytorch import Trainer, seed_everything

    from fusionrec.data.datamodule import MultiTaskDataModule
    from fusionrec.training.module import MultiTaskModule

    config = history_config()
    seed_everything(config["seed_everything"])
    datamodule = MultiTaskDataModule(**config["data"], tasks=config["model"]["tasks"])
    model = MultiTaskModule(**config["model"])
    trainer = Trainer(**config["trainer"])
    trainer.fit(model, datamodule)
    from fusionrec_history.encoders import MeanHistoryEncoder

    assert isinstance(model.model.encoders["watched"], MeanHistoryEncoder)  # the type's default_encoder
    metrics = trainer.test(model, datamodule, verbose=False)[0]
    assert np.isfinite(metrics["test/click/auc"])
    predictions = trainer.predict(model, datamodule)
    assert sum(len(next(iter(batch.values()))) for batch in predictions) == len(datamodule.splits["test"])

    # The data module's histories run across the splits in time order: test rows see training events,
    # and each equals the encoding of the raw lists read off the log one row at a time.
    splits = {name: frame.rename(columns={"user_id": "user", "item_category": "genre"})
              for name, frame in datamodule.splits.items()}
    kind = datamodule.preprocessor.types["watched"]
    rows = np.random.default_rng(0).choice(len(splits["test"]), 25, replace=False)
    log = pd.concat(splits.values(), ignore_index=True)
    log = log[log["click"] > 0]
    test = splits["test"].iloc[rows]
    lists, training_events = [], 0
    for user, time in zip(test["user"], test["timestamp"]):
        earlier = log[(log["user"] == user) & (log["timestamp"] < time)].sort_values("timestamp", kind="stable")
        lists.append([[item, genre] for item, genre in zip(earlier["item_id"], earlier["genre"])])
        training_events += int((earlier.index[-HISTORY["max_length"]:] < len(splits["train"])).sum())
    gathered = datamodule.tables["test"][torch.from_numpy(rows)].features["watched"]
    np.testing.assert_array_equal(gathered.numpy(), kind.transform(lists))
    assert training_events > 0


def test_a_history_column_missing_from_a_split_or_streaming_is_one_error(tmp_path):
    from fusionrec.data.datamodule import MultiTaskDataModule

    config = history_config()
    misnamed = {**HISTORY, "history": {**HISTORY["history"], "user": "visitor"}}
    data = {**config["data"], "features": {**config["data"]["features"], "watched": misnamed}}
    datamodule = MultiTaskDataModule(**data, tasks=config["model"]["tasks"])
    with pytest.raises(DataError, match="data.features.watched.history.user: no column 'visitor' in"):
        datamodule.setup("fit")
    features = {name: spec for name, spec in config["data"]["features"].items() if name not in ("watched", "hour")}
    datamodule = MultiTaskDataModule(**{**config["data"], "features": {**features, "hour": HISTORY}},
                                     tasks=config["model"]["tasks"])
    with pytest.raises(DataError, match="data.features.hour.history: the feature is built from the log, but .* has "
                                        "a column 'hour' too"):
        datamodule.setup("fit")
    streamed = {key: value for key, value in config["data"].items() if key != "generate"}
    with pytest.raises(ConfigError, match="data.features.watched.history: not available with data.streaming"):
        MultiTaskDataModule(**streamed, streaming={"train": str(tmp_path / "*.parquet")},
                            tasks=config["model"]["tasks"])


def test_a_request_list_through_the_serving_encoder_equals_the_built_history():
    from fusionrec.serving.features import FeatureEncoder, RequestError

    log = pd.DataFrame({"user": [1, 1, 1, 2], "timestamp": [1, 2, 3, 1], "item_id": ["a", "b", "c", "a"],
                        "genre": ["x", "y", "x", None]})
    items = fitted(Categorical, "item_id", {}, log["item_id"].to_numpy())
    genres = fitted(Categorical, "genre", {}, log["genre"].to_numpy())
    options = {"max_length": 2, "vocabulary": "item_id", "side": ["genre"],
               "history": {"user": "user", "time": "timestamp", "item": "item_id"}}
    kind = fitted(SequenceFeature, "watched", options, log["item_id"].to_numpy(), [items, genres])
    built = build_histories({"train": log}, kind, KEY)["train"].values().numpy()
    manifest = {feature.name: {**feature.state,
                               "implementation": f"{type(feature).__module__}:{type(feature).__name__}"}
                for feature in (items, genres, kind)}
    encoder = FeatureEncoder(manifest)
    # Row 2 (user 1 at time 3) saw a then b; the client sends its whole history, more than max_length.
    request = {"item_id": ["c", "a"], "genre": ["x", None], "watched": [[["a", "x"], ["b", "y"]], [["zz", "x"]]]}
    encoded = encoder(request)
    np.testing.assert_array_equal(encoded["watched"][0], built[2])
    assert encoded["watched"][1, :, 0].tolist() == [PADDING, OUT_OF_VOCABULARY]
    longer = encoder({**request, "watched": [[["a", "x"], ["a", "x"], ["b", "y"]], None]})
    np.testing.assert_array_equal(longer["watched"][0], built[2])  # truncated as in training
    with pytest.raises(RequestError, match="field 'watched': row 1: expected a list of ids"):
        encoder({**request, "watched": [None, 7]})
    with pytest.raises(RequestError, match=f"field 'watched': row 0: a list of {MAX_PARTS + 1} elements"):
        encoder({**request, "watched": [[["a", "x"]] * (MAX_PARTS + 1), None]})


def test_a_checkpoint_trained_with_another_history_rule_is_told_apart_from_the_config():
    from fusionrec.data.schema import parse_features
    from fusionrec.training.checkpoint import config_differences

    options = {"history": {"user": "user", "time": "timestamp", "item": "item_id"}}
    trained = fitted(SequenceFeature, "watched", options, np.array(["a"], dtype=object))
    hyper = {"preprocessing": {"features": {"watched": trained.state}, "tasks": {}, "scenario": None}, "tasks": {}}
    model = {"tasks": {}}
    same = parse_features({"watched": {"type": "sequence", **options}})
    assert config_differences({"hyper_parameters": hyper}, same, None, model) == []
    clicked = {"history": {**options["history"], "positive": {"column": "click"}}}
    other = parse_features({"watched": {"type": "sequence", **clicked}})
    assert [difference.split(" is ")[0] for difference in config_differences({"hyper_parameters": hyper}, other,
                                                                             None, model)] == [
        "data.features.watched.history"]
    # Sharing item_id's vocabulary instead of its own (the state keeps the choice as "shares").
    shared = parse_features({"watched": {"type": "sequence", "vocabulary": "item_id", **options}})
    assert config_differences({"hyper_parameters": hyper}, shared, None, model) == [
        "data.features.watched.vocabulary is None in the checkpoint, 'item_id' in the config"]


def test_a_list_column_through_the_preprocessor_and_a_bad_cell_named_by_file_column_and_row():
    from fusionrec.data.preprocessing import Preprocessor
    from fusionrec.data.schema import parse_features, parse_tasks
    from fusionrec.plugins import get_registry

    registry = get_registry()
    features = parse_features({"watched": {"type": "sequence", "max_length": 2}})
    tasks = parse_tasks({"click": {"head": "binary"}}, registry)
    frame = pd.DataFrame({"watched": [["a", "b", "c"], "b|c", None, []], "click": [1, 0, 1, 0]})
    frame.attrs["source"] = "rows.parquet"
    preprocessor = Preprocessor.fit(frame, features, tasks, registry)
    table = preprocessor.transform(frame, registry)
    np.testing.assert_array_equal(table.features["watched"].numpy(),
                                  preprocessor.types["watched"].transform([["b", "c"], ["b", "c"], [], []]))
    bad = frame.assign(watched=[["a"], None, 3.5, ["b"]])
    bad.attrs["source"] = "rows.parquet"
    bad.index = [10, 11, 12, 13]
    with pytest.raises(DataError, match=r"rows.parquet, column 'watched': row 12: expected a list of ids or a "
                                        r"'\|'-separated string, got 3.5"):
        preprocessor.transform(bad, registry)


def test_fit_names_the_cell_of_an_element_that_is_no_id():
    kind = SequenceFeature("watched", SequenceFeature.check_options({}, KEY))
    with pytest.raises(FeatureValueError, match="in the list: expected one id") as error:
        kind.fit(np.array([["a", "b"], None, ["c", ["d"]]], dtype=object))
    assert error.value.row == 2


def test_a_built_history_is_left_to_the_data_module_unless_the_table_has_the_column():
    from fusionrec.data.preprocessing import Preprocessor
    from fusionrec.data.schema import parse_features, parse_tasks
    from fusionrec.plugins import get_registry

    registry = get_registry()
    options = {"type": "sequence", "max_length": 2, "history": {"user": "user", "time": "timestamp", "item": "item_id"}}
    tasks = parse_tasks({"click": {"head": "binary"}}, registry)
    log = pd.DataFrame({"user": [1, 1], "timestamp": [1, 2], "item_id": ["a", "b"], "click": [1, 0]})
    preprocessor = Preprocessor.fit(log, parse_features({"watched": options}), tasks, registry)
    assert preprocessor.state["features"]["watched"]["vocabulary"] == ["a", "b"]  # fitted on history.item
    assert "watched" not in preprocessor.transform(log, registry).features
    # A table of users with each one's history as a list (fusionrec recommend's users file).
    users = pd.DataFrame({"watched": [["b", "a", "zz"]]})
    encoded = preprocessor.transform(users, registry, with_labels=False).features["watched"]
    np.testing.assert_array_equal(encoded.numpy(), preprocessor.types["watched"].transform([["a", "zz"]]))


def test_users_follow_the_id_rule_across_files_and_a_missing_user_has_no_history():
    options = {"max_length": 3, "history": {"user": "user", "time": "t", "item": "item_id"}}
    train = pd.DataFrame({"user": [7, 7, None], "t": [1, 2, 0], "item_id": ["a", "b", "c"]})
    kind = fitted(SequenceFeature, "watched", options, train["item_id"].to_numpy())
    predict = pd.DataFrame({"user": ["7", 7.0, None], "t": [5, 2, 5]})
    columns = build_histories({"train": train, "predict": predict}, kind, KEY)
    assert columns["predict"].values()[..., 0].tolist() == [kind.transform([["a", "b"]])[0, :, 0].tolist(),
                                                            kind.transform([["a"]])[0, :, 0].tolist(), [0, 0, 0]]
    assert columns["train"].values()[2, :, 0].tolist() == [0, 0, 0]
