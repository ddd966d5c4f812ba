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

from fusionrec.errors import CommandParser, ConfigError, DataError
from fusionrec.data.keyed import Side, read_side, transform_side
from fusionrec.recommend.catalogue import assign_fields, pairs_by_row
from fusionrec.serving.fused_score import COMBINATIONS, FusedScore
from fusionrec.recommend.metrics import topk_metrics
from fusionrec.recommend.ranker import Ranker, TopK
from fusionrec.recommend.towers import TowerSearch, has_towers, tower_sides
from fusionrec.reporting.files import write_atomically
from fusionrec.training.checkpoint import load_module

SCORE_HELP = ("fused score, YAML: {task: weight} or {task: {weight: W, offset: C}}, "
              "e.g. '{click: 1, like: 0.5, watch_time: {weight: 0.2, offset: 1}}'")


class TopKSource:
    """What ``recommend`` and ``evaluate_topk`` rank with: a ranking checkpoint (every pair scored,
    :class:`Ranker`), a retrieval checkpoint (its towers searched, :class:`TowerSearch`), or a retrieval
    checkpoint's top ``candidates`` ordered by a ranking checkpoint (retrieve, then rank)."""

    def __init__(self, checkpoint: str, score: str | dict | None, combine: str, max_pairs: int,
                 retriever: str | None = None, candidates: int | None = None, approximate: bool = False,
                 nprobe: int = 32):
        module = load_module(checkpoint)
        retrieval = load_module(retriever, "--retriever") if retriever is not None else None
        if retrieval is not None:
            if has_towers(module):
                raise ConfigError(f"--ckpt {checkpoint}: a retrieval checkpoint; with --retriever, --ckpt is the "
                                  f"ranking checkpoint that orders the retrieved candidates")
            if not has_towers(retrieval):
                raise ConfigError(f"--retriever {retriever}: a ranking checkpoint; --retriever takes a retrieval "
                                  f"checkpoint (trained with model.retrieval)")
            if candidates is None:
                raise ConfigError("--candidates: give the number of candidates to retrieve per user with --retriever")
        elif candidates is not None:
            raise ConfigError("--candidates: only with --retriever (the retrieval checkpoint that finds them)")
        elif has_towers(module):
            retrieval, module = module, None
        if candidates is not None and candidates < 1:
            raise ConfigError(f"--candidates: expected a positive number of candidates, got {candidates}")
        if module is None and score is not None:
            raise ConfigError(f"--score: {checkpoint} is a retrieval checkpoint, which ranks by its towers' inner "
                              f"product; drop --score, or give it as --retriever with a ranking checkpoint as --ckpt")
        if module is not None and score is None:
            raise ConfigError(f"--score: {checkpoint} is a ranking checkpoint; give the fused score to rank by, "
                              f"e.g. --score '{{{next(iter(module.model.heads))}: 1}}'")
        if approximate and retrieval is None:
            raise ConfigError(f"--approximate: searches a retrieval model's item vectors, and {checkpoint} has no "
                              f"towers; give a retrieval checkpoint as --ckpt or --retriever")
        self.candidates = candidates
        self.scorer = None if module is None else Ranker(module, FusedScore.parse(score, combine,
                                                                                  list(module.model.heads)), max_pairs)
        self.search = None if retrieval is None else TowerSearch(retrieval, max_pairs, approximate, nprobe)

    def read(self, users_path: str, items_path: str, user_key: str, item_key: str) -> tuple[Side, Side]:
        """Both tables, tensorised for each model: ``users.fields`` / ``.table`` are the ranking
        model's (if any), the towers' own Sides, on the same frames, are kept for :meth:`top`."""
        users, items = read_side(users_path, user_key, "--users"), read_side(items_path, item_key, "--items")
        if self.search is not None:
            self.tower_users, self.tower_items = Side(users.frame, users.keys, []), Side(items.frame, items.keys, [])
            tower_sides(self.search.module, self.tower_users, self.tower_items, "--users", "--items")
        if self.scorer is not None:
            module, preprocessing = self.scorer.module, self.scorer.module.hparams.preprocessing
            assign_fields(preprocessing, users, items, "--users", "--items")
            for side in (users, items):
                transform_side(side, preprocessing)
            # Content fields get their prepare/cached features on their columns, whichever side holds them.
            module.attach_content_encoders({"users": users.table, "items": items.table})
        return users, items

    def width(self, k: int) -> int:
        """How many items the first stage searches per user: ``k``, or the candidates to rank."""
        if self.candidates is not None and self.candidates < k:
            raise ConfigError(f"--candidates: {self.candidates} is fewer than --k {k}; retrieve at least as many "
                              f"candidates as you recommend")
        return k if self.candidates is None else self.candidates

    def top(self, users: Side, items: Side, user_rows: np.ndarray, k: int,
            exclude: tuple[np.ndarray, np.ndarray] | None, with_exact: bool = False) -> tuple[TopK, float | None]:
        """The top ``k`` of each of ``user_rows`` (``exclude``: pairs never returned), and with an
        approximate search and ``with_exact``, its recall against exact search (else None)."""
        width = self.width(k)
        if self.search is None:
            return self.scorer.rank(users, items, user_rows, k, exclude), None
        scores, rows, recall = self.search.search(self.tower_users, self.tower_items, user_rows, width, exclude,
                                                  with_exact)
        if self.scorer is None:
            return TopK(rows, scores, {}), recall
        return self.scorer.rank_candidates(users, items, user_rows, rows, k), recall


def recommendations_frame(top: TopK, users: Side, items: Side, user_rows: np.ndarray, user_key: str,
                          item_key: str) -> pd.DataFrame:
    """One row per recommendation: user key, rank (1 = best), item key, score (the fused score, or the
    towers' ``<u, v> / temperature``) and, from a ranking model, each task's score."""
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


def recommend(checkpoint: str, users_path: str, items_path: str, k: int, score: str | dict | None = None,
              combine: str = "product", exclude: str | None = None, user_key: str = "user_id",
              item_key: str = "item_id", max_pairs: int = 65536, retriever: str | None = None,
              candidates: int | None = None, approximate: bool = False, nprobe: int = 32) -> pd.DataFrame:
    """Top ``k`` items of ``items_path`` for every user of ``users_path``; ``exclude``: a table of
    (user, item) pairs never to recommend (e.g. the users' history). ``checkpoint``: a ranking
    checkpoint (``score`` required) or a retrieval one (its towers); ``retriever``: a retrieval
    checkpoint whose top ``candidates`` per user the ranking ``checkpoint`` orders. ``approximate``:
    search the towers' item vectors with faiss (``nprobe`` lists) instead of exactly."""
    if k < 1:
        raise ConfigError(f"--k: expected a positive number of recommendations, got {k}")
    source = TopKSource(checkpoint, score, combine, max_pairs, retriever, candidates, approximate, nprobe)
    source.width(k)
    users, items = source.read(users_path, items_path, user_key, item_key)
    excluded = pairs_by_row(exclude, user_key, item_key, users.keys, items.keys, "--exclude") if exclude else None
    user_rows = np.arange(len(users.keys))
    top, _ = source.top(users, items, user_rows, k, excluded)
    return recommendations_frame(top, users, items, user_rows, user_key, item_key)


def evaluate_topk(checkpoint: str, train_path: str, test_path: str, users_path: str, items_path: str,
                  ks: Sequence[int], score: str | dict | None = None, combine: str = "product",
                  user_key: str = "user_id", item_key: str = "item_id", max_pairs: int = 65536,
                  retriever: str | None = None, candidates: int | None = None, approximate: bool = False,
                  nprobe: int = 32) -> dict[str, float]:
    """Full ranking over every item for each user with a (user, item) pair in ``test_path``, the
    user's ``train_path`` items excluded; every test pair is relevant. Adds ``users`` (evaluated)
    and, with ``approximate``, ``approximate_recall``: the share of the exact search's top items
    (``max(ks)``, or the ``candidates``) that the approximate search found. Models as in :func:`recommend`."""
    source = TopKSource(checkpoint, score, combine, max_pairs, retriever, candidates, approximate, nprobe)
    source.width(max(ks))
    users, items = source.read(users_path, items_path, user_key, item_key)
    if max(ks) > len(items.keys):
        raise ConfigError(f"--k: {max(ks)} is more than the {len(items.keys)} items of {items_path}")
    train = pairs_by_row(train_path, user_key, item_key, users.keys, items.keys, "--train")
    test_users, test_items = pairs_by_row(test_path, user_key, item_key, users.keys, items.keys, "--test")
    evaluated, test_users = np.unique(test_users, return_inverse=True)  # evaluated users renumbered 0..U-1
    if not len(evaluated):
        raise DataError(f"--test: {test_path} has no (user, item) pair of users in --users and items in --items")
    top, recall = source.top(users, items, evaluated, max(ks), train, with_exact=True)
    metrics = {**topk_metrics(top.items, test_users, test_items, len(items.keys), ks), "users": len(evaluated)}
    return metrics if recall is None else {**metrics, "approximate_recall": recall}


def _parser(command: str, description: str) -> CommandParser:
    parser = CommandParser(prog=f"fusionrec {command}", description=description)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by fusionrec fit: a ranking model, or a "
                                                       "retrieval model (model.retrieval), ranked by its towers")
    parser.add_argument("--users", required=True, help="users table: key column + the model's user features")
    parser.add_argument("--items", required=True, help="items table (the catalogue): key column + item features")
    parser.add_argument("--score", help=f"required with a ranking checkpoint: {SCORE_HELP}")
    parser.add_argument("--combine", choices=COMBINATIONS, default="product",
                        help="product: prod (s + offset)^weight; sum: sum weight * (s + offset)")
    parser.add_argument("--user-key", default="user_id", help="user id column (default: user_id)")
    parser.add_argument("--item-key", default="item_id", help="item id column (default: item_id)")
    parser.add_argument("--max-pairs", type=int, default=65536,
                        help="(user, item) pairs scored at once, or rows a tower encodes at once; bounds memory "
                             "(default: 65536)")
    parser.add_argument("--retriever", help="retrieval checkpoint: retrieve each user's top --candidates with it, "
                                            "then rank only those with --ckpt and --score")
    parser.add_argument("--candidates", type=int, help="with --retriever: candidates per user, at least --k")
    parser.add_argument("--approximate", action="store_true",
                        help="search the towers' item vectors with a faiss IVF index instead of exactly "
                             "(pip install 'fusionrec[retrieval]')")
    parser.add_argument("--nprobe", type=int, default=32,
                        help="with --approximate: index lists searched per user; more is slower, with higher "
                             "recall (default: 32)")
    return parser


def run_recommend(argv: list[str]) -> int:
    parser = _parser("recommend", "Top-K items of the catalogue for every user, by a fused score of the tasks.")
    parser.add_argument("--k", type=int, default=20, help="recommendations per user (default: 20)")
    parser.add_argument("--exclude", help="table of (user, item) pairs never to recommend, e.g. the history")
    parser.add_argument("--out", required=True, help="output Parquet: user, rank, item, score, and one column per "
                                                     "task of a ranking checkpoint")
    args = parser.parse_args(argv)
    frame = recommend(args.ckpt, args.users, args.items, args.k, args.score, args.combine, args.exclude,
                      args.user_key, args.item_key, args.max_pairs, args.retriever, args.candidates,
                      args.approximate, args.nprobe)
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
                            args.combine, args.user_key, args.item_key, args.max_pairs, args.retriever,
                            args.candidates, args.approximate, args.nprobe)
    table = Table(title=f"full-ranking metrics, {metrics['users']} test users")
    for column in ("k", "recall", "ndcg", "coverage"):
        table.add_column(column, justify="right")
    for k in args.k:
        table.add_row(str(k), *(f"{metrics[f'{name}@{k}']:.4f}" for name in ("recall", "ndcg", "coverage")))
    Console().print(table)
    if "approximate_recall" in metrics:
        print(f"approximate search: {metrics['approximate_recall']:.4f} of the exact search's top items found")
    if args.out:
        write_atomically(Path(args.out), lambda partial: partial.write_text(json.dumps(metrics, indent=2) + "\n"))
    return 0
