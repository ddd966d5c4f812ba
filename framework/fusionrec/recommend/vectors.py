"""Top-K by inner product over precomputed item vectors: exact (blocked matrix multiply) or
approximate (faiss IVF-Flat, optional: ``pip install 'fusionrec[retrieval]'``).

Both take users ``[U, D]`` and items ``[I, D]`` and return ``(scores float32[U, K], rows int64[U, K])``
with ``K = min(k, I)``, best first, ``scores = users @ items.T * scale``. ``exclude`` is a pair of
arrays ``(user rows [P], item rows [P])``: those pairs are never returned. A slot left without a
candidate (everything excluded, or the approximate search found fewer) has row -1 and score -inf,
like :class:`fusionrec.recommend.ranker.TopK`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fusionrec.errors import ConfigError, DataError

# Scores of one (user block x item block) tile; with the running top-K it bounds the extra memory.
BLOCK_BYTES = 64 * 2**20
BLOCK_USERS = 1024  # users per block when none is given: large enough for an efficient matmul


def _check(users: Tensor, dim: int, num_items: int, k: int, scale: float) -> Tensor:
    """``users`` as float32 ``[U, dim]``, after checking ``k``, ``scale`` and the catalogue's size."""
    users = torch.as_tensor(users, dtype=torch.float32)
    if k < 1:
        raise ConfigError(f"top-K: k must be at least 1, got {k}")
    if not scale > 0:
        raise ConfigError(f"top-K: scale must be > 0, got {scale}")
    if num_items == 0:
        raise DataError("top-K: the item catalogue is empty (0 item vectors)")
    if users.dim() != 2 or users.shape[1] != dim:
        raise DataError(f"top-K: user vectors {tuple(users.shape)} must be [U, {dim}] like the item vectors")
    return users


def _items(items: Tensor) -> Tensor:
    items = torch.as_tensor(items, dtype=torch.float32)
    if items.dim() != 2:
        raise DataError(f"top-K: item vectors {tuple(items.shape)} must be [I, D]")
    return items


def _excluded_pairs(exclude: tuple[np.ndarray, np.ndarray] | None, num_users: int,
                    num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``exclude`` as int64 (user, item) arrays sorted by user; out-of-range rows are a DataError
    (they would silently exclude another pair)."""
    if exclude is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    users, items = (np.asarray(rows, dtype=np.int64).ravel() for rows in exclude)
    if len(users) != len(items):
        raise DataError(f"top-K exclusions: {len(users)} user rows but {len(items)} item rows")
    for name, rows, bound in (("user", users, num_users), ("item", items, num_items)):
        bad = np.flatnonzero((rows < 0) | (rows >= bound))
        if len(bad):
            raise DataError(f"top-K exclusions: {name} row {rows[bad[0]]} at pair {bad[0]} is outside 0..{bound - 1}")
    order = np.argsort(users, kind="stable")
    return users[order], items[order]


@torch.no_grad()
def exact_topk(users: Tensor, items: Tensor, k: int, exclude: tuple[np.ndarray, np.ndarray] | None = None,
               scale: float = 1.0, block_users: int | None = None,
               block_items: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` items per user by ``users @ items.T * scale`` (see the module docstring).

    Users go in blocks of ``block_users`` (default 1,024) and items in blocks of ``block_items``
    (default: ``BLOCK_BYTES`` of float32 scores per tile); each tile's top K is merged into the
    block's running top K, so the extra memory is one ``[block_users, block_items]`` tile plus
    ``[block_users, 2K]`` whatever the catalogue size.
    """
    items = _items(items)
    users = _check(users, items.shape[1], items.shape[0], k, scale)
    num_users, num_items = users.shape[0], items.shape[0]
    k = min(k, num_items)
    for name, size in (("block_users", block_users), ("block_items", block_items)):
        if size is not None and size < 1:
            raise ConfigError(f"top-K: {name} must be at least 1, got {size}")
    block_users = block_users or max(1, min(num_users, BLOCK_USERS))
    block_items = block_items or max(k, BLOCK_BYTES // 4 // block_users)
    excluded_users, excluded_items = _excluded_pairs(exclude, num_users, num_items)
    scores = np.empty((num_users, k), np.float32)
    rows = np.empty((num_users, k), np.int64)
    # One tile's memory, reused: a fresh product per tile would hold two tiles while the old one is freed.
    buffer = torch.empty(min(block_users, num_users) * min(block_items, num_items))
    for user_start in range(0, num_users, block_users):
        user_end = min(user_start + block_users, num_users)
        block = users[user_start:user_end]
        top = torch.full((len(block), k), -torch.inf)
        chosen = torch.full((len(block), k), -1, dtype=torch.long)
        first, last = np.searchsorted(excluded_users, [user_start, user_end])
        # This block's exclusions, by item so that each tile's share is one slice.
        by_item = np.argsort(excluded_items[first:last], kind="stable")
        block_excluded_users = torch.as_tensor(excluded_users[first:last][by_item] - user_start)
        block_excluded_items = excluded_items[first:last][by_item]
        for item_start in range(0, num_items, block_items):
            item_end = min(item_start + block_items, num_items)
            tile = buffer[:len(block) * (item_end - item_start)].view(len(block), item_end - item_start)
            torch.mm(block, items[item_start:item_end].T, out=tile)
            if scale != 1.0:
                tile *= scale
            lo, hi = np.searchsorted(block_excluded_items, [item_start, item_end])
            tile[block_excluded_users[lo:hi], torch.as_tensor(block_excluded_items[lo:hi] - item_start)] = -torch.inf
            tile_top, tile_chosen = tile.topk(min(k, item_end - item_start), dim=1)
            top, position = torch.cat([top, tile_top], dim=1).topk(k, dim=1)
            chosen = torch.cat([chosen, tile_chosen + item_start], dim=1).gather(1, position)
        scores[user_start:user_end] = top.numpy()
        rows[user_start:user_end] = torch.where(top > -torch.inf, chosen, -1).numpy()
    return scores, rows


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("approximate top-K needs faiss: pip install 'fusionrec[retrieval]'") from None
    return faiss


class ApproximateIndex:
    """Approximate top-K by inner product: a faiss IVF-Flat index over the item vectors.

    IVF-Flat clusters the items into ``nlist`` lists by k-means and scores a user exactly (flat
    vectors, no quantisation) against the items of the ``nprobe`` lists whose centroids have the
    highest inner product with it: a search reads about ``nprobe / nlist`` of the catalogue.
    Defaults: ``nlist = 4 sqrt(I)`` (the low end of faiss's guideline, capped so that each list
    has the 39 training items k-means asks for), k-means on at most 64 items per list for 10
    iterations (build 14 s at 1M items, D = 64, two threads), ``nprobe = 32``. It was chosen
    over HNSW because it builds several times faster (100k items on one core: 1.5 s against 11 s
    for HNSW with M = 32, which also searched slower at the same recall) and its one search knob,
    ``nprobe``, trades recall for time predictably. The index keeps its own copy of the vectors
    (``4 I D`` bytes). On ``benchmarks/retrieval_scale.py`` the defaults give recall@100 >= 0.95 (figures in
    ``benchmarks/retrieval/README.md``); recall depends on how clustered the vectors are, so
    measure it on your own with :func:`recall_against` and raise ``nprobe`` if it is too low.
    """

    def __init__(self, items: Tensor, nlist: int | None = None, nprobe: int = 32, scale: float = 1.0,
                 seed: int = 0):
        faiss = _faiss()
        items = _items(items)
        _check(torch.empty(0, items.shape[1]), items.shape[1], items.shape[0], 1, scale)
        vectors = np.ascontiguousarray(items.numpy(), dtype=np.float32)
        self.num_items, self.scale = len(vectors), scale
        self.nlist = nlist or max(1, min(round(4 * math.sqrt(self.num_items)), self.num_items // 39))
        if not 1 <= self.nlist <= self.num_items:
            raise ConfigError(f"approximate top-K: nlist must be in 1..{self.num_items} (the items), got {self.nlist}")
        if nprobe < 1:
            raise ConfigError(f"approximate top-K: nprobe must be at least 1, got {nprobe}")
        quantizer = faiss.IndexFlatIP(vectors.shape[1])
        self.index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], self.nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a 64-per-list sample for 10 iterations: faiss's 256 and 25 are 10x the training work.
        self.index.cp.seed, self.index.cp.max_points_per_centroid, self.index.cp.niter = seed, 64, 10
        self.index.train(vectors)
        self.index.add(vectors)
        self.index.nprobe = min(nprobe, self.nlist)
        self._quantizer = quantizer  # the index does not own it: keep it alive as long as the index

    def search(self, users: Tensor, k: int,
               exclude: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top ``k`` per user, as :func:`exact_topk` returns it. A user with ``c`` excluded
        items is searched for ``k + c`` (rounded up to a power of two, so users go in a few batches)
        and the excluded ones dropped."""
        users = _check(users, self.index.d, self.num_items, k, self.scale)
        queries = np.ascontiguousarray(users.numpy(), dtype=np.float32)
        num_users, k = len(queries), min(k, self.num_items)
        excluded_users, excluded_items = _excluded_pairs(exclude, num_users, self.num_items)
        excluded_keys = excluded_users * self.num_items + excluded_items
        counts = np.bincount(excluded_users, minlength=num_users)
        extra = np.where(counts > 0, 2 ** np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64), 0)
        scores = np.full((num_users, k), -np.inf, np.float32)
        rows = np.full((num_users, k), -1, np.int64)
        for width in np.unique(extra):
            group = np.flatnonzero(extra == width)
            found_scores, found = self.index.search(queries[group], int(min(k + width, self.num_items)))
            dropped = (found < 0) | np.isin(group[:, None] * self.num_items + found, excluded_keys)
            keep = np.argsort(dropped, axis=1, kind="stable")[:, :k]  # kept results first, in score order
            found_scores = np.take_along_axis(found_scores, keep, 1)
            found, dropped = np.take_along_axis(found, keep, 1), np.take_along_axis(dropped, keep, 1)
            rows[group, :found.shape[1]] = np.where(dropped, -1, found)
            scores[group, :found.shape[1]] = np.where(dropped, -np.inf, found_scores * self.scale)
        return scores, rows


def recall_against(exact_rows: np.ndarray, approx_rows: np.ndarray) -> float:
    """Share of the exact top-K (``[U, K]`` item rows, -1 ignored) that the approximate search
    (``[U, K']``) also returned for the same user; 1.0 when the exact lists are empty."""
    exact_rows, approx_rows = np.asarray(exact_rows), np.asarray(approx_rows)
    if len(exact_rows) != len(approx_rows):
        raise DataError(f"recall: {len(exact_rows)} users in the exact top-K but {len(approx_rows)} in the approximate")
    width = max(exact_rows.max(initial=-1), approx_rows.max(initial=-1)) + 2
    user = np.arange(len(exact_rows))[:, None]
    exact_keys = (user * width + exact_rows + 1)[exact_rows >= 0]
    approx_keys = (user * width + approx_rows + 1)[approx_rows >= 0]
    return float(np.isin(exact_keys, approx_keys).mean()) if len(exact_keys) else 1.0
