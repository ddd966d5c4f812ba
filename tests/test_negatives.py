"""Sampled negatives for positive-only logs: group layout, exclusions, copied columns, popularity
frequencies, fixed val negatives, fresh train negatives, and config errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch import seed_everything

from fusionrec.data.datamodule import MultiTaskDataModule
from fusionrec.errors import ConfigError, DataError

FEATURES = {"user_id": {"type": "categorical"}, "item_id": {"type": "categorical"},
            "genre": {"type": "categorical"}, "age": {"type": "numeric"}}
TASKS = {"watched": {"head": "listwise"}, "rating": {"head": "regression", "label": "rating"}}
NEGATIVES = {"task": "watched", "user": "user_id", "item": "item_id", "per_positive": 3,
             "item_features": ["item_id", "genre"]}


def write_logs(directory, users=30, items=20, per_user=6, seed=0):
    """Positive-only train/val logs; an item's genre is a function of the item, age of the user."""
    rng = np.random.default_rng(seed)
    rows = [(u, i, f"g{i % 4}", 20 + u, rng.integers(1, 6)) for u in range(users)
            for i in rng.choice(items, per_user, replace=False)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "genre", "age", "rating"])
    val = frame.sample(frac=0.2, random_state=seed)
    frame.drop(val.index).to_csv(directory / "train.csv", index=False)
    val.to_csv(directory / "val.csv", index=False)
    return frame.drop(val.index), val


def datamodule(directory, negatives=None, **kwargs):
    data = MultiTaskDataModule(features=FEATURES, tasks=TASKS, train=str(directory / "train.csv"),
                               val=str(directory / "val.csv"), negatives={**NEGATIVES, **(negatives or {})},
                               batch_size=kwargs.pop("batch_size", 40), **kwargs)
    data.setup("fit")
    return data


def _raw(data, batch, column):
    """The raw values of a column for every row of a batch: the positive's, then the sampled items'."""
    vocabulary = np.array(["<pad>", "<oov>", *data.preprocessor.state["features"][column]["vocabulary"]])
    return vocabulary[batch.features[column].numpy()]


def test_each_positive_gets_per_positive_negatives_in_its_group(tmp_path):
    write_logs(tmp_path)
    data = datamodule(tmp_path)
    for batch in data.train_dataloader():
        groups, sizes = torch.unique_consecutive(batch.groups, return_counts=True)
        assert (sizes == 4).all() and len(batch) == 4 * len(groups)
        assert torch.equal(batch.labels["watched"].view(-1, 4), torch.tensor([[1.0, 0, 0, 0]]).expand(len(groups), 4))
        # other tasks are labelled on the positives only
        assert torch.equal(batch.label_rows["rating"], torch.arange(len(batch)) % 4 == 0)
        assert "watched" not in batch.label_rows
    assert len(torch.cat([b.groups for b in data.train_dataloader()]).unique()) == len(data.splits["train"])


def test_negatives_copy_the_positive_and_take_the_sampled_items_columns(tmp_path):
    train, _ = write_logs(tmp_path)
    data = datamodule(tmp_path)
    batch = next(iter(data.train_dataloader()))
    items = _raw(data, batch, "item_id").astype(int)
    genres = _raw(data, batch, "genre")
    assert (genres == np.array([f"g{i % 4}" for i in items])).all()  # the sampled item's own genre
    for column in ("user_id", "age"):  # the positive's user and context, copied
        values = batch.features[column].view(-1, 4, *batch.features[column].shape[1:])
        assert (values == values[:, :1]).all()
    assert set(items) <= set(train["item_id"])  # items of the training split only


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_a_negative_is_never_a_known_positive_of_the_user(tmp_path, sampler):
    # 20 items, 14 positives per user: rejection sampling often hits a positive, so the exact
    # fallback runs too.
    train, val = write_logs(tmp_path, per_user=14)
    data = datamodule(tmp_path, {"sampler": sampler})
    for split, loader in (("train", data.train_dataloader()), ("val", data.val_dataloader())):
        positives_of = (train if split == "train" else pd.concat([train, val])).groupby("user_id")["item_id"].apply(set)
        for batch in loader:
            users = _raw(data, batch, "user_id").astype(int).reshape(-1, 4)
            items = _raw(data, batch, "item_id").astype(int).reshape(-1, 4)
            for user, sampled in zip(users[:, 0], items[:, 1:]):
                assert not set(sampled) & positives_of[user]


def test_popularity_sampling_follows_training_counts(tmp_path):
    # Item i has i + 1 training rows, all from different users; user 999 has none of them.
    rows = [(100 * i + j, i) for i in range(8) for j in range(i + 1)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(genre="g", age=30, rating=3)
    frame.to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame([(999, 0, "g", 30, 3)], columns=frame.columns).to_csv(tmp_path / "val.csv", index=False)
    data = datamodule(tmp_path, {"sampler": "popularity", "per_positive": 20000})
    items = _raw(data, next(iter(data.val_dataloader())), "item_id").astype(int)[1:]
    counts = np.arange(1, 9, dtype=float)
    counts[0] = 0  # item 0 is user 999's positive
    observed = np.bincount(items, minlength=8) / len(items)
    assert np.abs(observed - counts / counts.sum()).max() < 0.015  # ~5 standard errors at 20000 draws


def test_val_negatives_are_fixed_and_train_negatives_fresh_each_epoch(tmp_path):
    write_logs(tmp_path)
    data = datamodule(tmp_path)

    def items(loader):
        return torch.cat([batch.features["item_id"] for batch in loader])

    assert torch.equal(items(data.val_dataloader()), items(data.val_dataloader()))
    seed_everything(5)
    first, second = items(data.train_dataloader()), items(data.train_dataloader())
    assert not torch.equal(first, second)
    seed_everything(5)
    assert torch.equal(items(data.train_dataloader()), first)  # reproducible from the seed


def test_the_ranking_label_column_may_be_absent_or_all_ones(tmp_path):
    train, val = write_logs(tmp_path)
    train.assign(watched=0).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train.csv, column 'watched'.*must be 1"):
        datamodule(tmp_path)
    train.assign(watched=1).to_csv(tmp_path / "train.csv", index=False)
    assert len(datamodule(tmp_path).splits["train"]) == len(train)


@pytest.mark.parametrize("negatives, message", [
    ({"per_item": 3}, r"data.negatives: unknown key\(s\) 'per_item'"),
    ({"per_positive": 0}, r"data.negatives.per_positive: expected an integer >= 1"),
    ({"sampler": "zipf"}, r"data.negatives.sampler: expected one of uniform, popularity"),
    ({"task": "clicked"}, r"data.negatives.task: 'clicked' is not a task"),
    ({"item_features": ["item_id", "year"]}, r"data.negatives.item_features: 'year' is not a column"),
])
def test_bad_negatives_config(tmp_path, negatives, message):
    write_logs(tmp_path)
    with pytest.raises(ConfigError, match=message):
        datamodule(tmp_path, negatives)


def test_missing_user_column_and_users_with_nothing_left_to_sample(tmp_path):
    write_logs(tmp_path)
    with pytest.raises(DataError, match=r"data.negatives.user: no column 'account' in .*train.csv"):
        datamodule(tmp_path, {"user": "account"})
    write_logs(tmp_path, items=6, per_user=6)  # every user has watched every item
    with pytest.raises(DataError, match=r"data.negatives.user.*every item of the training split"):
        datamodule(tmp_path)


def test_predict_scores_the_rows_as_given_without_negatives(tmp_path):
    _, val = write_logs(tmp_path)
    data = MultiTaskDataModule(features=FEATURES, tasks=TASKS, train=str(tmp_path / "train.csv"),
                               test=str(tmp_path / "val.csv"), negatives=NEGATIVES)
    data.setup("predict")
    batches = list(data.predict_dataloader())
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(len(val)))
    assert all(b.groups is None for b in batches) and len(data.predict_frame()) == len(val)
