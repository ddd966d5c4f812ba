"""The peer benchmark's own code that its README figures rest on and that runs without the peers:
the ml-100k splits, the weighted metrics, the kept predictions and the user bootstrap
(benchmarks/peers; the adapters need torch-rechub and DeepCTR-Torch and are run by run.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

PEERS = Path(__file__).parents[1] / "benchmarks" / "peers"
MOVIELENS = Path(__file__).parents[2] / "shared" / "data" / "ml-100k"
PEER_MODULES = ("datasets", "metrics", "worker", "user_bootstrap")


@pytest.fixture(scope="module")
def peers():
    """The benchmark's modules, which import each other by bare name, imported from their folder;
    the bare names leave sys.modules afterwards so they shadow nothing for later tests."""
    sys.path.insert(0, str(PEERS))
    try:
        import datasets
        import metrics
        import user_bootstrap
        import worker

        yield SimpleNamespace(datasets=datasets, metrics=metrics, worker=worker, user_bootstrap=user_bootstrap)
    finally:
        sys.path.remove(str(PEERS))
        for name in PEER_MODULES:
            sys.modules.pop(name, None)


@pytest.mark.skipif(not MOVIELENS.is_dir(), reason=f"MovieLens 100K not found at {MOVIELENS}")
def test_ml100k_splits_hold_out_what_the_readme_says(peers, tmp_path):
    time_split = peers.datasets.prepare(peers.datasets.ml100k(MOVIELENS, "ml100k"), tmp_path)
    per_user = peers.datasets.prepare(peers.datasets.ml100k(MOVIELENS, "ml100k-per-user"), tmp_path)
    by_time = {name: pd.read_parquet(path) for name, path in time_split.items()}
    within = {name: pd.read_parquet(path) for name, path in per_user.items()}

    # Over the whole log by time: 80/10/10, each period after the one before.
    assert [len(by_time[name]) for name in ("train", "val", "test")] == [80_000, 10_000, 10_000]
    assert by_time["train"].timestamp.max() <= by_time["val"].timestamp.min()
    assert by_time["val"].timestamp.max() <= by_time["test"].timestamp.min()
    cold = ~by_time["test"].user_id.isin(set(by_time["train"].user_id))
    assert 0.8 < cold.mean() < 0.9  # "86% of the test rows are users the training split never saw"

    # Within each user: all 100,000 rows once, every user in every split, each user's periods in order.
    assert sum(len(frame) for frame in within.values()) == 100_000
    users = set(within["train"].user_id)
    assert len(users) == 943 and users == set(within["val"].user_id) == set(within["test"].user_id)
    span = {name: frame.groupby("user_id").timestamp.agg(["min", "max"]) for name, frame in within.items()}
    assert (span["train"]["max"] <= span["val"]["min"]).all()  # the user index aligns the three
    assert (span["val"]["max"] <= span["test"]["min"]).all()
    assert (within["train"].liked == (within["train"].rating >= 4)).all()


def test_weighted_metrics_equal_the_rows_repeated(peers):
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 200), rng.random(200)
    ratings, predicted = rng.integers(1, 6, 200).astype(float), rng.normal(3.5, 1, 200)
    counts = rng.integers(0, 4, 200)
    repeated = np.repeat(np.arange(200), counts)

    for kind, y, p in (("binary", labels, scores), ("regression", ratings, predicted)):
        weighted = peers.metrics.task_metrics(kind, y, p, counts.astype(float))
        expanded = peers.metrics.task_metrics(kind, y[repeated], p[repeated])
        assert weighted == pytest.approx(expanded, rel=1e-12)
        assert weighted != pytest.approx(peers.metrics.task_metrics(kind, y, p))  # the weights do count


def test_predictions_file_round_trips_whole(peers, tmp_path):
    predictions = {"val": {"liked": np.array([0.1, 0.9]), "rating": np.array([3.0, 4.5])},
                   "test": {"liked": np.array([0.2]), "rating": np.array([1.5])}}
    path = tmp_path / "predictions.npz"
    peers.worker.save_predictions(path, predictions)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.npz"]  # no partial file left
    with np.load(path) as kept:
        assert sorted(kept.files) == ["test/liked", "test/rating", "val/liked", "val/rating"]
        for split, tasks in predictions.items():
            for task, values in tasks.items():
                np.testing.assert_array_equal(kept[f"{split}/{task}"], values)


def held_out_frame(rng, users=40, rows=600):
    frame = pd.DataFrame({"user_id": rng.integers(0, users, rows).astype(str),
                          "rating": rng.integers(1, 6, rows).astype(float)})
    frame["liked"] = (frame.rating >= 4).astype("int8")
    return frame


def test_bootstrap_leads_follow_which_framework_ranks_better(peers):
    rng = np.random.default_rng(1)
    frame = held_out_frame(rng)
    informed = [frame.liked + rng.normal(0, 0.8, len(frame)) for _ in range(3)]  # three seeds
    noise = [rng.random(len(frame)) for _ in range(3)]

    same = peers.user_bootstrap.bootstrap(frame, "liked", "binary", informed, informed, 100, np.random.default_rng(0))
    assert same["observed"] == same["low"] == same["high"] == 0 and same["first_ahead"] == 0

    better = peers.user_bootstrap.bootstrap(frame, "liked", "binary", informed, noise, 100, np.random.default_rng(0))
    auc = lambda runs: np.mean([peers.metrics.task_metrics("binary", frame.liked, p)["auc"] for p in runs])
    assert better["observed"] == pytest.approx(auc(informed) - auc(noise))
    assert better["users"] == frame.user_id.nunique() and better["rows"] == len(frame)
    assert 0 < better["low"] < better["observed"] < better["high"] and better["first_ahead"] == 1.0
    worse = peers.user_bootstrap.bootstrap(frame, "liked", "binary", noise, informed, 100, np.random.default_rng(0))
    assert worse["observed"] == pytest.approx(-better["observed"]) and worse["first_ahead"] == 0

    # RMSE: lower is better, so the lead is the second's RMSE minus the first's.
    close = [frame.rating + rng.normal(0, 0.3, len(frame))]
    far = [frame.rating + rng.normal(0, 1.5, len(frame))]
    rmse = peers.user_bootstrap.bootstrap(frame, "rating", "regression", close, far, 100, np.random.default_rng(0))
    assert rmse["observed"] > 0 and rmse["first_ahead"] == 1.0


def write_results(tmp_path, frame, frameworks, keep_predictions=True):
    split_paths = {}
    for split in ("val", "test"):
        split_paths[split] = str(tmp_path / f"{split}.parquet")
        frame.to_parquet(split_paths[split])
    runs = []
    for framework, quality in frameworks.items():
        for seed in (0, 1):
            rng = np.random.default_rng(seed)
            path = tmp_path / f"{framework}-{seed}.npz"
            if keep_predictions:
                np.savez(path, **{f"{split}/{task}": frame[task] + rng.normal(0, noise, len(frame))
                                  for split in ("val", "test") for task, noise in
                                  (("liked", quality), ("rating", quality))})
            runs.append({"dataset": "ml100k", "model": "ple", "framework": framework, "seed": seed,
                         "metrics": {"liked": {"auc": 0.7, "logloss": 0.6}, "rating": {"rmse": 1.0}},
                         "predictions": str(path)})
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"datasets": {"ml100k": {"paths": split_paths}}, "runs": runs}))
    return results


def test_bootstrap_prints_one_row_per_split_and_task(peers, tmp_path, capsys):
    frame = held_out_frame(np.random.default_rng(2))
    results = write_results(tmp_path, frame, {"fusionrec": 0.5, "deepctr-torch": 2.0})
    peers.user_bootstrap.main([str(results), "--resamples", "50"])

    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ml100k")]
    assert [row.split(" | ")[2:4] for row in rows] == [["liked AUC", "val"], ["rating RMSE", "val"],
                                                        ["liked AUC", "test"], ["rating RMSE", "test"]]
    assert all(row.endswith("| 100.0% |") for row in rows)  # the less noisy framework, every resample

    # A failed seed leaves the cell out (run.py's table fails that row too), not compared on fewer seeds.
    results.write_text(results.read_text().replace('"seed": 1,', '"seed": 1, "error": "killed",', 1))
    with pytest.raises(SystemExit, match="no dataset x model that both"):
        peers.user_bootstrap.main([str(results), "--resamples", "50"])
    assert "ml100k ple: left out, failed runs (fusionrec seed 1)" in capsys.readouterr().err


def test_bootstrap_refuses_runs_without_predictions_and_one_framework_twice(peers, tmp_path, capsys):
    frame = held_out_frame(np.random.default_rng(3))
    results = write_results(tmp_path, frame, {"fusionrec": 0.5, "deepctr-torch": 2.0}, keep_predictions=False)
    with pytest.raises(SystemExit, match=r"ml100k ple fusionrec: no predictions file for seeds \[0, 1\]"):
        peers.user_bootstrap.main([str(results)])
    assert "| ml100k" not in capsys.readouterr().out  # refused before printing any row

    with pytest.raises(SystemExit):
        peers.user_bootstrap.main([str(results), "--frameworks", "fusionrec", "fusionrec"])
    assert "two different frameworks, not fusionrec twice" in capsys.readouterr().err
