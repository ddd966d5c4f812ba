"""Top-K over item vectors (fusionrec.recommend.vectors): exact blocked search against a full sort,
exclusions, the catalogue's edges, and faiss's approximate search with its recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionrec.errors import ConfigError, DataError
from fusionrec.recommend.vectors import ApproximateIndex, exact_topk, recall_against


def full_sort(users: np.ndarray, items: np.ndarray, k: int, scale: float = 1.0,
              excluded: set[tuple[int, int]] = frozenset()) -> list[list[int]]:
    """Reference: every score, excluded pairs removed, sorted (ties are absent from random data)."""
    scores = users.astype(np.float64) @ items.T.astype(np.float64) * scale
    return [[int(i) for i in np.argsort(-row) if (u, int(i)) not in excluded][:k] for u, row in enumerate(scores)]


def as_lists(rows: np.ndarray) -> list[list[int]]:
    return [[int(i) for i in row if i >= 0] for row in rows]


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    return rng.standard_normal((37, 8), dtype=np.float32), rng.standard_normal((53, 8), dtype=np.float32)


@pytest.mark.parametrize("block_users, block_items", [(None, None), (5, 7), (37, 3), (1, 53), (8, 100)])
def test_exact_topk_equals_a_full_sort(vectors, block_users, block_items):
    users, items = vectors
    scores, rows = exact_topk(torch.from_numpy(users), torch.from_numpy(items), k=10, scale=2.5,
                              block_users=block_users, block_items=block_items)
    assert scores.dtype == np.float32 and rows.dtype == np.int64 and rows.shape == (37, 10)
    assert as_lists(rows) == full_sort(users, items, 10)
    np.testing.assert_allclose(scores, np.take_along_axis(users @ items.T * 2.5, rows, 1), rtol=1e-5)


@pytest.mark.parametrize("block_users, block_items", [(None, None), (4, 6)])
def test_exact_topk_never_returns_an_excluded_pair(vectors, block_users, block_items):
    users, items = vectors
    rng = np.random.default_rng(1)
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, 37, 300), rng.integers(0, 53, 300))}
    pairs = {pair for pair in pairs if pair[0] != 5} | {(3, i) for i in range(53)}  # user 3: the whole catalogue seen
    pairs |= {(5, i) for i in range(50)}  # user 5: three candidates left for k = 10
    user_rows, item_rows = map(np.array, zip(*sorted(pairs, key=lambda pair: -pair[1])))  # any order
    scores, rows = exact_topk(torch.from_numpy(users), torch.from_numpy(items), k=10, exclude=(user_rows, item_rows),
                              block_users=block_users, block_items=block_items)
    assert as_lists(rows) == full_sort(users, items, 10, excluded=pairs)
    assert (rows[3] == -1).all() and np.isneginf(scores[3]).all()
    assert sorted(rows[5, :3]) == [50, 51, 52] and (rows[5, 3:] == -1).all()


def test_exact_topk_k_above_the_catalogue_returns_every_item(vectors):
    users, items = vectors
    scores, rows = exact_topk(torch.from_numpy(users), torch.from_numpy(items[:4]), k=100, block_items=3)
    assert rows.shape == (37, 4)
    assert as_lists(rows) == full_sort(users, items[:4], 100)


def test_exact_topk_bad_input(vectors):
    users, items = vectors
    with pytest.raises(DataError, match="catalogue is empty"):
        exact_topk(torch.from_numpy(users), torch.empty(0, 8), k=10)
    with pytest.raises(ConfigError, match="k must be at least 1, got 0"):
        exact_topk(torch.from_numpy(users), torch.from_numpy(items), k=0)
    with pytest.raises(ConfigError, match="block_items must be at least 1, got -2"):
        exact_topk(torch.from_numpy(users), torch.from_numpy(items), k=3, block_items=-2)
    with pytest.raises(DataError, match=r"must be \[U, 8\]"):
        exact_topk(torch.ones(2, 3), torch.from_numpy(items), k=1)
    with pytest.raises(DataError, match="item row 53 at pair 1 is outside 0..52"):
        exact_topk(torch.from_numpy(users), torch.from_numpy(items), k=1, exclude=(np.array([0, 1]), np.array([2, 53])))


def clustered(rng, count: int, centres: np.ndarray) -> np.ndarray:
    return centres[rng.integers(0, len(centres), count)] + 0.3 * rng.standard_normal((count, centres.shape[1]),
                                                                                    dtype=np.float32)


def test_approximate_search_finds_the_exact_top_k_and_skips_exclusions():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((20, 16), dtype=np.float32)
    items, users = torch.from_numpy(clustered(rng, 3000, centres)), torch.from_numpy(clustered(rng, 200, centres))
    exact_scores, exact_rows = exact_topk(users, items, k=20)
    index = ApproximateIndex(items, nlist=20, nprobe=4)
    scores, rows = index.search(users, k=20)
    assert rows.shape == (200, 20)
    assert recall_against(exact_rows, rows) >= 0.9
    found = rows >= 0
    np.testing.assert_allclose(scores[found], (users @ items.T).numpy()[np.nonzero(found)[0], rows[found]], rtol=1e-4)

    # Half of each user's exact top 20 excluded, and user 0's whole catalogue: never returned.
    excluded_users = np.concatenate([np.repeat(np.arange(1, 200), 10), np.zeros(3000, np.int64)])
    excluded_items = np.concatenate([exact_rows[1:, ::2].ravel(), np.arange(3000)])
    scores, rows = index.search(users, k=20, exclude=(excluded_users, excluded_items))
    returned = {(u, int(i)) for u in range(200) for i in rows[u] if i >= 0}
    assert returned.isdisjoint(zip(excluded_users.tolist(), excluded_items.tolist()))
    assert (rows[0] == -1).all() and np.isneginf(scores[0]).all()
    _, exact_rows = exact_topk(users, items, k=20, exclude=(excluded_users, excluded_items))
    assert recall_against(exact_rows, rows) >= 0.9


def test_recall_against_counts_the_shared_rows():
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    approx = np.array([[4, 9, 1, 8], [6, 5, 7, -1]])
    assert recall_against(exact, approx) == pytest.approx(4 / 6)


def test_approximate_search_without_faiss_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ConfigError, match=r"pip install 'fusionrec\[retrieval\]'"):
        ApproximateIndex(torch.ones(4, 2))
