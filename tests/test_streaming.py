"""Streaming data (data.streaming): Parquet shards read a row group at a time, every row read once per
epoch across ranks and DataLoader workers, the same number of training steps on every rank, the fit
from one pass, and the hashing trick."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_config

from fusionrec.cli import main, make_cli
from fusionrec.data import streaming
from fusionrec.data.datamodule import MultiTaskDataModule
from fusionrec.data.hashing import hashed_ids
from fusionrec.data.preprocessing import OUT_OF_VOCABULARY, RESERVED, IncrementalFit, Preprocessor
from fusionrec.data.schema import parse_features, parse_tasks
from fusionrec.data.streaming import ParquetShards, StreamingDataset, StreamingLoader, fit_streaming
from fusionrec.data.synthetic import generate_impressions
from fusionrec.errors import ConfigError
from fusionrec.plugins import get_registry
from fusionrec.serving.features import FeatureEncoder

FEATURES = {"user_id": {"type": "categorical"}, "item_id": {"type": "categorical", "hash_buckets": 64},
            "item_tags": {"type": "multi_categorical", "max_length": 4}, "user_age": {"type": "numeric"},
            "item_embedding": {"type": "vector"}, "scenario": {"type": "categorical"}}
TASKS = {"click": {"head": "binary"}, "watch_time": {"head": "regression", "weight": 0.5}}
COLUMNS = [*FEATURES, "click", "watch_time"]
# Shards of very different sizes and row groups, so that no split point falls on a file boundary.
SHARD_ROWS, ROW_GROUP = (1100, 37, 560), 100


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Three Parquet shards of a generated log (1,697 rows, 19 row groups) in ``train/``, and a
    validation file ``val.parquet``."""
    directory = tmp_path_factory.mktemp("shards")
    log = generate_impressions(rows=sum(SHARD_ROWS) + 300, users=300, items=150, seed=3)
    (directory / "train").mkdir()
    start = 0
    for number, rows in enumerate(SHARD_ROWS):
        log.iloc[start:start + rows].to_parquet(directory / "train" / f"part-{number}.parquet", index=False,
                                                row_group_size=ROW_GROUP)
        start += rows
    log.iloc[start:].to_parquet(directory / "val.parquet", index=False, row_group_size=ROW_GROUP)
    return directory


def train_frame(directory: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(directory / "train" / f"part-{n}.parquet") for n in range(len(SHARD_ROWS))],
                     ignore_index=True)


def specs():
    return parse_features(FEATURES), parse_tasks(TASKS, get_registry())


@pytest.fixture(scope="module")
def preprocessor(shards) -> Preprocessor:
    return Preprocessor.fit(train_frame(shards), *specs(), get_registry())


def dataset(directory: Path, preprocessor: Preprocessor, rank: int = 0, world_size: int = 1, num_workers: int = 0,
            training: bool = True, batch_size: int = 64, shuffle_buffer: int = 0, seed: int = 5) -> StreamingDataset:
    files = ParquetShards([str(directory / "train" / "*.parquet")], "data.streaming.train")
    return StreamingDataset(files, preprocessor, COLUMNS, batch_size, training, shuffle_buffer, seed, rank,
                            world_size, num_workers)


def epoch_rows(data: StreamingDataset, num_workers: int, epoch: int = 0) -> list[torch.Tensor]:
    """Each batch's row numbers, in the order a DataLoader with ``num_workers`` real workers yields them."""
    return [batch.index for batch in StreamingLoader(data, num_workers, lambda: epoch)]


# --- every row once, the same steps on every rank ---

@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
def test_two_ranks_with_two_workers_each_read_every_row_exactly_once(shards, preprocessor, training):
    total = sum(SHARD_ROWS)
    per_rank = []
    for rank in (0, 1):
        data = dataset(shards, preprocessor, rank, world_size=2, num_workers=2, training=training, shuffle_buffer=200)
        batches = epoch_rows(data, num_workers=2)
        assert len(batches) == len(data)
        assert max(len(b) for b in batches) <= 64
        per_rank.append(batches)
    seen = torch.cat([b for batches in per_rank for b in batches])
    assert sorted(seen.tolist()) == list(range(total))  # every row, none twice
    if training:
        assert len(per_rank[0]) == len(per_rank[1])  # DDP: both ranks run the same number of steps


# 1,697 rows in ranges of 282 and 283 rows (6 ranges) or 848 and 849 (2): cut into full batches of 141
# (53), a range of 283 (849) rows would take one batch more than one of 282 (848). Batches of 1000:
# every range fits in one.
@pytest.mark.parametrize("world_size,num_workers,batch_size", [(3, 2, 141), (2, 3, 1000), (2, 1, 53)])
def test_uneven_shards_give_every_rank_the_same_steps_without_dropping_or_repeating_rows(
        shards, preprocessor, monkeypatch, world_size, num_workers, batch_size):
    # Every (rank, worker) in this process: the worker a DataLoader would start, by its worker info.
    worker = SimpleNamespace(num_workers=num_workers, id=0)
    monkeypatch.setattr(streaming, "get_worker_info", lambda: worker)
    steps, seen = [], []
    for rank in range(world_size):
        data = dataset(shards, preprocessor, rank, world_size, num_workers, batch_size=batch_size)
        batches = []
        for worker.id in range(num_workers):
            batches += [batch.index for batch in data]
        assert all(0 < len(b) <= batch_size for b in batches)
        steps.append(len(batches))
        assert len(batches) == len(data)
        seen += batches
    assert len(set(steps)) == 1, steps
    assert sorted(torch.cat(seen).tolist()) == list(range(sum(SHARD_ROWS)))


def test_the_shuffle_buffer_changes_the_order_between_epochs_but_not_the_rows(shards, preprocessor):
    data = dataset(shards, preprocessor, shuffle_buffer=300)
    first, again, second = (torch.cat(epoch_rows(data, 0, epoch)) for epoch in (0, 0, 1))
    assert torch.equal(first, again)  # the order is the seed's and the epoch's
    assert not torch.equal(first, second)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(sum(SHARD_ROWS)))
    # The buffer mixes rows of different row groups within a batch; without it a batch is a run of one.
    batch = epoch_rows(data, 0)[0]
    assert len(set((batch // ROW_GROUP).tolist())) > 1
    unshuffled = epoch_rows(dataset(shards, preprocessor, shuffle_buffer=0), 0)[0]
    assert torch.equal(unshuffled, torch.arange(unshuffled[0], unshuffled[0] + len(unshuffled)))


# --- the fit ---

def up_to_rounding(state: dict) -> dict:
    """``state`` with its means and standard deviations compared to 12 significant digits: moments
    merged chunk by chunk round differently from numpy's over the whole column."""
    def approximate(entry: dict) -> dict:
        return {key: pytest.approx(value, rel=1e-12) if key in ("mean", "std") else value
                for key, value in entry.items()}
    return {"features": {name: approximate(entry) for name, entry in state["features"].items()},
            "tasks": {name: {**task, "labels": approximate(task["labels"])} for name, task in state["tasks"].items()},
            "scenario": state["scenario"], "id_rule": state["id_rule"]}


def test_the_one_pass_fit_equals_the_in_memory_fit(shards, monkeypatch):
    monkeypatch.setattr(IncrementalFit, "MERGE_EVERY", 3)  # so that counts of several chunks are merged
    features, tasks = specs()
    files = ParquetShards([str(shards / "train")], "data.streaming.train")  # a directory: its Parquet files
    streamed = fit_streaming(files, features, tasks, get_registry()).state
    in_memory = Preprocessor.fit(train_frame(shards), features, tasks, get_registry()).state
    assert streamed == up_to_rounding(in_memory)
    assert streamed["features"]["item_id"] == {"type": "categorical", "hash_buckets": 64}
    assert len(streamed["features"]["user_id"]["vocabulary"]) > 250  # counted across every row group


def test_fit_rows_fits_on_the_first_rows_only_and_later_ids_are_out_of_vocabulary(shards):
    features, tasks = specs()
    files = ParquetShards([str(shards / "train" / "*.parquet")], "data.streaming.train")
    bound = 250  # two and a half row groups of the first file
    fitted = fit_streaming(files, features, tasks, get_registry(), fit_rows=bound)
    head = train_frame(shards).iloc[:bound]
    assert fitted.state == up_to_rounding(Preprocessor.fit(head, features, tasks, get_registry()).state)
    later = set(train_frame(shards)["user_id"].astype(str)) - set(head["user_id"].astype(str))
    assert later and not later & set(fitted.state["features"]["user_id"]["vocabulary"])
    rows = train_frame(shards).iloc[bound:]
    ids = fitted.transform(rows, get_registry()).features["user_id"].numpy()
    assert (ids[rows["user_id"].astype(str).isin(later).to_numpy()] == OUT_OF_VOCABULARY).all()


# --- the hashing trick ---

def test_hashed_ids_are_the_documented_blake2b_and_the_same_in_another_process():
    tokens = ["u1", "u2", "7", "ünïcode", None]
    ids = hashed_ids(tokens, 1000)
    documented = [RESERVED + int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")
                  % 1000 for t in tokens[:-1]]
    assert ids.tolist() == [*documented, OUT_OF_VOCABULARY]
    # Pinned: a changed function would re-map every id of every trained model.
    assert hashed_ids(["u1"], 2 ** 62).tolist() == [2 + 0xD56A4E3F684D9992 % 2 ** 62]
    # Python's own hash is salted per process; this must not be. And a scoring service imports the
    # module without torch or pandas.
    code = ("import sys; from fusionrec.data.hashing import hashed_ids; "
            "print(hashed_ids(['u1', 'u2', '7', 'ünïcode', None], 1000).tolist(), 'torch' in sys.modules, "
            "'pandas' in sys.modules)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout
    assert other.strip() == f"{ids.tolist()} False False"


def test_a_hashed_categorical_has_no_vocabulary_and_encodes_ids_by_their_string_form():
    features = parse_features({"user": {"type": "categorical", "hash_buckets": 10}})
    tasks = parse_tasks({"y": {"head": "binary"}}, get_registry())
    # The same ids as a file may hold them: integers, floats (a column with a missing value), strings.
    columns = {"int": [7, 12, 7], "float": [7.0, 12.0, np.nan], "string": ["7", "12", None]}
    ids = {}
    for kind, values in columns.items():
        frame = pd.DataFrame({"user": values, "y": [0, 1, 0]})
        fitted = Preprocessor.fit(frame, features, tasks, get_registry())
        assert fitted.state["features"]["user"] == {"type": "categorical", "hash_buckets": 10}
        assert fitted.field_infos()["user"].cardinality == 10 + RESERVED
        ids[kind] = fitted.transform(frame, get_registry()).features["user"].tolist()
    assert ids["int"] == hashed_ids(["7", "12", "7"], 10).tolist()
    assert ids["float"][:2] == ids["string"][:2] == ids["int"][:2]
    assert ids["float"][2] == ids["string"][2] == OUT_OF_VOCABULARY
    # A scoring service encodes raw values to the same ids, from the bundle's state alone.
    serving = FeatureEncoder({"user": {**fitted.state["features"]["user"],
                                       "implementation": "fusionrec_features.tabular:Categorical"}})
    assert serving({"user": [7, 12.0, None]})["user"].tolist() == ids["int"][:2] + [OUT_OF_VOCABULARY]


@pytest.mark.parametrize("options,message", [
    ({"hash_buckets": 0}, "data.features.user.hash_buckets: expected a positive number of buckets, got 0"),
    ({"hash_buckets": 100, "min_count": 2}, "data.features.user: hash_buckets replaces the vocabulary"),
])
def test_hash_bucket_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        parse_features({"user": {"type": "categorical", **options}})


@pytest.mark.parametrize("change,message", [
    (lambda d: {**d, "streaming": {**d["streaming"], "shuffle": True}},
     "data.streaming: unknown key(s) shuffle; accepted: train, val, test, shuffle_buffer, fit_rows"),
    (lambda d: {**d, "streaming": {**d["streaming"], "fit_rows": 0}}, "data.streaming.fit_rows: expected a positive"),
    (lambda d: {**d, "streaming": {"val": "v.parquet"}}, "data.streaming.train: required"),
    (lambda d: {**d, "path": "log.parquet"},
     "data: give exactly one of data.path (split by data.split), data.train (+ val/test), data.generate or "
     "data.streaming; got path, streaming"),
    (lambda d: {**d, "group": "session"}, "data.group: not available with data.streaming"),
    (lambda d: {**d, "features": {**d["features"], "title": {"type": "text"}}},
     "data.features.title: text fields are not available with data.streaming"),
    (lambda d: {**d, "features": {**d["features"], "scenario": {"type": "categorical", "hash_buckets": 8}}},
     "data.features.scenario.hash_buckets: the scenario column needs a vocabulary"),
])
def test_streaming_options_are_checked_before_anything_is_read(shards, tmp_path, change, message):
    data = change(streaming_config(shards, tmp_path)["data"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        MultiTaskDataModule(tasks=TASKS, **data)


# --- the command line ---

def streaming_config(shards: Path, root: Path, **streaming_options) -> dict:
    return {
        "seed_everything": 1,
        "trainer": {"max_epochs": 2, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(root)},
        "data": {"streaming": {"train": f"file://{shards}/train/*.parquet", "val": str(shards / "val.parquet"),
                               "test": str(shards / "val.parquet"), "shuffle_buffer": 300, **streaming_options},
                 "scenario": "scenario", "features": FEATURES, "batch_size": 128, "num_workers": 2},
        "model": {"tasks": TASKS, "embedding_dim": 8},
    }


def test_fusionrec_fit_streams_parquet_shards_and_saves_their_fit_in_the_checkpoint(shards, tmp_path, capsys):
    config = write_config(tmp_path, streaming_config(shards, tmp_path / "run", fit_rows=1000))
    cli = make_cli(["fit", "--config", str(config)])
    out = capsys.readouterr().out
    assert "test metrics" in out  # the best checkpoint was tested on the streamed test split
    (checkpoint,) = (tmp_path / "run").glob("**/last.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    features, tasks = specs()
    files = ParquetShards([str(shards / "train" / "*.parquet")], "data.streaming.train")
    assert saved["hyper_parameters"]["preprocessing"] == fit_streaming(
        files, features, tasks, get_registry(), "scenario", fit_rows=1000).state
    # 2 workers, each cutting its half of the 1,697 rows into ceil(849 / 128) = 7 batches, for 2 epochs.
    assert cli.trainer.global_step == 2 * 2 * 7


@pytest.mark.parametrize("source,message", [
    ("{shards}/train/*.csv", "data.streaming.train: no Parquet file at {shards}/train/*.csv"),
    ("nosuchprotocol://bucket/train/*.parquet", "data.streaming.train: cannot list nosuchprotocol://bucket/train"),
    ("{tmp}/notes.parquet", "data.streaming.train: cannot read {tmp}/notes.parquet as Parquet"),
])
def test_a_bad_path_or_url_names_the_key_and_the_path(shards, tmp_path, capsys, source, message):
    (tmp_path / "notes.parquet").write_text("not parquet")
    config = streaming_config(shards, tmp_path / "run")
    config["data"]["streaming"]["train"] = source.format(shards=shards, tmp=tmp_path)
    code = main(["fit", "--config", str(write_config(tmp_path, config))])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"fusionrec: error: {message.format(shards=shards, tmp=tmp_path)}" in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_shard_without_a_configured_column_is_named_with_the_key(shards, tmp_path, capsys):
    config = streaming_config(shards, tmp_path / "run")
    config["data"]["features"] = {**FEATURES, "age": {"type": "numeric"}}
    code = main(["fit", "--config", str(write_config(tmp_path, config))])
    err = capsys.readouterr().err
    assert code == 2
    assert f"data.features.age: no column 'age' in {shards}/train/part-0.parquet (data.streaming.train)" in err


def test_two_process_ddp_streams_uneven_shards_to_the_end(shards, tmp_path):
    """Two gloo processes with two workers each: 1,697 rows cut into ranges of 424 and 425 rows, each
    worker's in 4 batches, so both ranks take 8 steps. A rank with a step more would wait forever in
    the gradient all-reduce (the timeout ends it)."""
    config = streaming_config(shards, tmp_path / "run")
    config["trainer"].update(max_epochs=1)
    path = write_config(tmp_path, config)
    command = [str(Path(sys.executable).parent / "fusionrec"), "fit", "--config", str(path),
               "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--test_after_fit", "false"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "run").glob("**/epoch=*.ckpt")] == ["epoch=0-step=8.ckpt"]
