"""Full-ranking top-K on MovieLens 100K: most-popular, EASE and a fusionrec model, measured the same way.

Protocol (docs/recommend.md):
- per-user time split: each user's ratings in time order, the last 10% (at least one) are test, the
  10% before them validation, the rest train; every user keeps a history, so a collaborative model
  has something to go on (the configs' global time split leaves 86% of test rows to unseen users);
- relevant: a test rating >= 4 (a watched movie the user disliked is no hit); users without one skipped;
- candidates: every one of the 1,682 movies except the user's train and validation items;
- metrics: Recall@K, NDCG@K (binary relevance) and catalogue coverage@K, by fusionrec.recommend.metrics.

Baselines: most-popular (train + validation interaction counts); EASE (Steck, WWW 2019) on the binary
user x item matrix, lambda picked by validation NDCG@20 with train as history, then refit on train +
validation. fusionrec: ``fusionrec fit --config CONFIG`` on the train/validation files (early
stopping on validation), then ``evaluate_topk`` with the fused score ``--score``.

    .venv/bin/python benchmarks/topk_ml100k.py --config configs/movielens.yaml --score '{liked: 1}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusionrec.cli import main as fusionrec_main
from fusionrec.data.reading import read_table
from fusionrec.recommend import evaluate_topk, topk_metrics

DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "ml-100k"
LAMBDAS = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


def split_per_user(ratings: pd.DataFrame, fraction: float = 0.1) -> dict[str, pd.DataFrame]:
    """Train / val / test: each user's last ``fraction`` of ratings (at least one) is test, the
    ``fraction`` before it val (ties in time broken by item id, so the split is deterministic)."""
    ordered = ratings.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    from_end = ordered.groupby("user_id").cumcount(ascending=False).to_numpy()  # 0 = the latest
    per_user = np.maximum(1, np.round(fraction * ordered.groupby("user_id")["item_id"].transform("size"))).to_numpy()
    part = np.where(from_end < per_user, "test", np.where(from_end < 2 * per_user, "val", "train"))
    return {name: ordered[part == name] for name in ("train", "val", "test")}


def ease_weights(history: np.ndarray, regularisation: float) -> np.ndarray:
    """``[U, I]`` binary history -> ``[I, I]`` item-item weights ``B = I - P diag(1 / diag(P))``,
    ``P = (X^T X + lambda I)^-1``: the ridge regression of each item on the others (diag(B) = 0).
    Scores are ``X B``."""
    gram = history.T @ history + regularisation * np.eye(history.shape[1])
    inverse = np.linalg.inv(gram)
    return np.eye(history.shape[1]) - inverse / np.diag(inverse)


def popularity_scores(history: np.ndarray) -> np.ndarray:
    """``[U, I]``: every user gets each item's interaction count."""
    return np.broadcast_to(history.sum(0), history.shape)


def top_k(scores: np.ndarray, history: np.ndarray, k: int) -> np.ndarray:
    """``[U, k]`` best items per user, history items excluded."""
    masked = torch.as_tensor(np.where(history > 0, -np.inf, scores))
    return masked.topk(k, dim=1).indices.numpy()


def interaction_matrix(frame: pd.DataFrame, users: pd.Index, items: pd.Index) -> np.ndarray:
    matrix = np.zeros((len(users), len(items)))
    matrix[users.get_indexer(frame["user_id"]), items.get_indexer(frame["item_id"])] = 1.0
    return matrix


def evaluate_scores(scores: np.ndarray, history: np.ndarray, relevant: pd.DataFrame, users: pd.Index,
                    items: pd.Index, ks: list[int]) -> dict[str, float]:
    """Metrics over the users with a relevant item (rows of ``scores`` in ``users`` order)."""
    user_rows = users.get_indexer(relevant["user_id"])
    evaluated, renumbered = np.unique(user_rows, return_inverse=True)
    ranked = top_k(scores[evaluated], history[evaluated], max(ks))
    return {**topk_metrics(ranked, renumbered, items.get_indexer(relevant["item_id"]), len(items), ks),
            "users": len(evaluated)}


def fit_fusionrec(config: str, splits: dict[str, pd.DataFrame], work: Path, max_epochs: int | None) -> Path:
    """``fusionrec fit`` on the train/val files (no test during fit); the best checkpoint's path."""
    for name in ("train", "val"):
        splits[name].to_parquet(work / f"{name}.parquet")
    argv = ["fit", "--config", config, "--data.path", "null", "--data.split", "null",
            "--data.train", str(work / "train.parquet"), "--data.val", str(work / "val.parquet"),
            "--test_after_fit", "false", "--trainer.default_root_dir", str(work)]
    if max_epochs:
        argv += ["--trainer.max_epochs", str(max_epochs)]
    if fusionrec_main(argv) != 0:
        raise SystemExit("fusionrec fit failed")
    (best,) = (work / "lightning_logs").glob("version_*/checkpoints/epoch=*.ckpt")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/movielens.yaml", help="fusionrec config to train")
    parser.add_argument("--score", default="{liked: 1}", help="fused score for fusionrec (see fusionrec recommend)")
    parser.add_argument("--combine", default="product", choices=("product", "sum"))
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--max-epochs", type=int, help="override the config's trainer.max_epochs")
    parser.add_argument("--skip-fusionrec", action="store_true", help="baselines only")
    args = parser.parse_args()

    ratings = read_table(DATA / "ml-100k.inter", "ml-100k.inter")  # atomic file: every column a string
    ratings[["rating", "timestamp"]] = ratings[["rating", "timestamp"]].apply(pd.to_numeric)
    splits = split_per_user(ratings)
    users = pd.Index(sorted(ratings["user_id"].unique()))
    items = pd.Index(read_table(DATA / "ml-100k.item", "ml-100k.item")["item_id"])
    relevant = {name: splits[name][splits[name]["rating"] >= 4] for name in ("val", "test")}
    train = interaction_matrix(splits["train"], users, items)
    seen = interaction_matrix(pd.concat([splits["train"], splits["val"]]), users, items)  # test-time history
    print({name: len(frame) for name, frame in splits.items()},
          {f"relevant {name}": len(frame) for name, frame in relevant.items()})
    results = {}

    start = time.perf_counter()
    results["most-popular"] = {**evaluate_scores(popularity_scores(seen), seen, relevant["test"], users, items, args.k),
                               "seconds": time.perf_counter() - start}

    start = time.perf_counter()
    validation = {lam: evaluate_scores(train @ ease_weights(train, lam), train, relevant["val"], users, items, [20])["ndcg@20"]
                  for lam in LAMBDAS}
    chosen = max(validation, key=validation.get)
    results["EASE"] = {**evaluate_scores(seen @ ease_weights(seen, chosen), seen, relevant["test"], users, items, args.k),
                       "lambda": chosen, "validation ndcg@20": validation, "seconds": time.perf_counter() - start}

    if not args.skip_fusionrec:
        with tempfile.TemporaryDirectory() as directory:
            work = Path(directory)
            start = time.perf_counter()
            checkpoint = fit_fusionrec(args.config, splits, work, args.max_epochs)
            fitted = time.perf_counter() - start
            pd.concat([splits["train"], splits["val"]]).to_parquet(work / "seen.parquet")
            relevant["test"].to_parquet(work / "relevant.parquet")
            start = time.perf_counter()
            metrics = evaluate_topk(str(checkpoint), str(work / "seen.parquet"), str(work / "relevant.parquet"),
                                    str(DATA / "ml-100k.user"), str(DATA / "ml-100k.item"), args.k, args.score,
                                    args.combine)
            results[f"fusionrec {args.config} {args.score}"] = {**metrics, "fit seconds": fitted,
                                                                "rank seconds": time.perf_counter() - start}
    print(json.dumps(results, indent=2))
    columns = [f"{name}@{k}" for k in args.k for name in ("recall", "ndcg", "coverage")]
    print("\n| method | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 1))
    for method, metrics in results.items():
        print(f"| {method} | " + " | ".join(f"{metrics[c]:.4f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
