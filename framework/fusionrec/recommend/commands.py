"""``fusionrec recommend`` and ``fusionrec evaluate-topk``: a checkpoint, a users table and an items
table in; top-K lists (Parquet) or full-ranking metrics out. The functions behind them are the
Python API (``recommend``, ``evaluate_topk``), used by ``benchmarks/topk_ml100k.py`` too."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from fusionrec.data.batches import TensorTable
from fusionrec.errors import CommandParser, ConfigError, DataError
from fusionrec.recommend.catalogue import Side, assign_fields, pairs_by_row, read_side, transform_side
from fusionrec.serving.fused_score import COMBINATIONS, FusedScore
from fusionrec.recommend.metrics import topk_metrics
from fusionrec.recommend.ranker import Ranker, TopK
from fusionrec.reporting.files import write_atomically
from fusionrec.training.checkpoint import load_module
from fusionrec.training.module import MultiTaskModule

SCORE_HELP = ("fused score, YAML: {task: weight} or {task: {weight: W, offset: C}}, "
              "e.g. '{click: 1, like: 0.5, watch_time: {weight: 0.2, offset: 1}}'")


def load_sides(module: MultiTaskModule, users_path: str, items_path: str, user_key: str, item_key: str
               ) -> tuple[Side, Side]:
    """Both tables, their features split between them and tensorised with the checkpoint's preprocessing."""
    preprocessing = module.hparams.preprocessing
    users, items = read_side(users_path, user_key, "--users"), read_side(items_path, item_key, "--items")
    assign_fields(preprocessing, users, items, "--users", "--items")
    for side in (users, items):
        transform_side(side, preprocessing)
    # Content fields get their prepare/cached features on their columns, whichever side holds them.
    module.attach_content_encoders({"catalogue": TensorTable({}, {}, 0, {**users.table.media, **items.table.media})})
    return users, items


def ranker(module: MultiTaskModule, score: str | dict, combine: str, max_pairs: int) -> Ranker:
    return Ranker(module, FusedScore.parse(score, combine, list(module.model.heads)), max_pairs)


def recommendations_frame(top: TopK, users: Side, items: Side, user_rows: np.ndarray, user_key: str,
                          item_key: str) -> pd.DataFrame:
    """One row per recommendation: user key, rank (1 = best), item key, fused score, each task's score."""
    filled = top.items >= 0  # [U, K]
    user_index, position = np.nonzero(filled)
    frame = pd.DataFrame({user_key: users.frame[user_key].to_numpy()[user_rows[user_index]],
                          "rank": position + 1,
                          item_key: items.frame[item_key].to_numpy()[top.items[filled]],
                          "score": top.fused[filled]})
    for task, served in top.served.items():
        values = served[filled]
        frame[task] = list(values) if values.ndim > 1 else values
    return frame


def recommend(checkpoint: str, users_path: str, items_path: str, k: int, score: str | dict,
              combine: str = "product", exclude: str | None = None, user_key: str = "user_id",
              item_key: str = "item_id", max_pairs: int = 65536) -> pd.DataFrame:
    """Top ``k`` items of ``items_path`` for every user of ``users_path``; ``exclude``: a table of
    (user, item) pairs never to recommend (e.g. the users' history)."""
    if k < 1:
        raise ConfigError(f"--k: expected a positive number of recommendations, got {k}")
    module = load_module(checkpoint)
    scorer = ranker(module, score, combine, max_pairs)
    users, items = load_sides(module, users_path, items_path, user_key, item_key)
    excluded = pairs_by_row(exclude, user_key, item_key, users.keys, items.keys, "--exclude") if exclude else None
    user_rows = np.arange(len(users.keys))
    return recommendations_frame(scorer.rank(users, items, user_rows, k, excluded), users, items, user_rows,
                                 user_key, item_key)


def evaluate_topk(checkpoint: str, train_path: str, test_path: str, users_path: str, items_path: str,
                  ks: Sequence[int], score: str | dict, combine: str = "product", user_key: str = "user_id",
                  item_key: str = "item_id", max_pairs: int = 65536) -> dict[str, float]:
    """Full ranking over every item for each user with a (user, item) pair in ``test_path``, the
    user's ``train_path`` items excluded; every test pair is relevant. Adds ``users`` (evaluated)."""
    module = load_module(checkpoint)
    scorer = ranker(module, score, combine, max_pairs)
    users, items = load_sides(module, users_path, items_path, user_key, item_key)
    if max(ks) > len(items.keys):
        raise ConfigError(f"--k: {max(ks)} is more than the {len(items.keys)} items of {items_path}")
    train = pairs_by_row(train_path, user_key, item_key, users.keys, items.keys, "--train")
    test_users, test_items = pairs_by_row(test_path, user_key, item_key, users.keys, items.keys, "--test")
    evaluated, test_users = np.unique(test_users, return_inverse=True)  # evaluated users renumbered 0..U-1
    if not len(evaluated):
        raise DataError(f"--test: {test_path} has no (user, item) pair of users in --users and items in --items")
    top = scorer.rank(users, items, evaluated, max(ks), train)
    return {**topk_metrics(top.items, test_users, test_items, len(items.keys), ks), "users": len(evaluated)}


def _parser(command: str, description: str) -> CommandParser:
    parser = CommandParser(prog=f"fusionrec {command}", description=description)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by fusionrec fit")
    parser.add_argument("--users", required=True, help="users table: key column + the model's user features")
    parser.add_argument("--items", required=True, help="items table (the catalogue): key column + item features")
    parser.add_argument("--score", required=True, help=SCORE_HELP)
    parser.add_argument("--combine", choices=COMBINATIONS, default="product",
                        help="product: prod (s + offset)^weight; sum: sum weight * (s + offset)")
    parser.add_argument("--user-key", default="user_id", help="user id column (default: user_id)")
    parser.add_argument("--item-key", default="item_id", help="item id column (default: item_id)")
    parser.add_argument("--max-pairs", type=int, default=65536,
                        help="(user, item) pairs scored at once; bounds memory (default: 65536)")
    return parser


def run_recommend(argv: list[str]) -> int:
    parser = _parser("recommend", "Top-K items of the catalogue for every user, by a fused score of the tasks.")
    parser.add_argument("--k", type=int, default=20, help="recommendations per user (default: 20)")
    parser.add_argument("--exclude", help="table of (user, item) pairs never to recommend, e.g. the history")
    parser.add_argument("--out", required=True, help="output Parquet: user, rank, item, score, one column per task")
    args = parser.parse_args(argv)
    frame = recommend(args.ckpt, args.users, args.items, args.k, args.score, args.combine, args.exclude,
                      args.user_key, args.item_key, args.max_pairs)
    write_atomically(Path(args.out), lambda partial: frame.to_parquet(partial, index=False))
    print(f"wrote {len(frame)} recommendations for {frame[args.user_key].nunique()} users to {args.out}")
    return 0


def run_evaluate_topk(argv: list[str]) -> int:
    parser = _parser("evaluate-topk", "Full-ranking Recall@K, NDCG@K and coverage@K over every item: each "
                                      "test user's train items are excluded, its test items are the relevant ones.")
    parser.add_argument("--train", required=True, help="(user, item) pairs to exclude per user")
    parser.add_argument("--test", required=True, help="(user, item) pairs that count as hits")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20], help="cut-offs (default: 10 20)")
    parser.add_argument("--out", help="also write the metrics as JSON to this file")
    args = parser.parse_args(argv)
    if min(args.k) < 1:
        raise ConfigError(f"--k: expected positive cut-offs, got {args.k}")
    metrics = evaluate_topk(args.ckpt, args.train, args.test, args.users, args.items, args.k, args.score,
                            args.combine, args.user_key, args.item_key, args.max_pairs)
    table = Table(title=f"full-ranking metrics, {metrics['users']} test users")
    for column in ("k", "recall", "ndcg", "coverage"):
        table.add_column(column, justify="right")
    for k in args.k:
        table.add_row(str(k), *(f"{metrics[f'{name}@{k}']:.4f}" for name in ("recall", "ndcg", "coverage")))
    Console().print(table)
    if args.out:
        write_atomically(Path(args.out), lambda partial: partial.write_text(json.dumps(metrics, indent=2) + "\n"))
    return 0
