"""Full-ranking metrics from top-K lists: Recall@K, NDCG@K (binary relevance) and catalogue coverage.

They take the ranked lists themselves (what ``fusionrec recommend`` writes, or any baseline's top K),
not a score per catalogue item, so one function measures every recommender the same way; the
tests check them against hand-computed values and torchmetrics' per-query retrieval metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def topk_metrics(ranked: np.ndarray, relevant_users: np.ndarray, relevant_items: np.ndarray, num_items: int,
                 ks: Sequence[int]) -> dict[str, float]:
    """``ranked``: ``[U, K]`` item numbers (``0..num_items-1``) recommended to users ``0..U-1``, best
    first, -1 for an empty slot; ``relevant_users``/``relevant_items``: ``[R]`` the (user, item) pairs
    that count as hits (each user needs at least one). Returns, per k in ``ks`` (each ``<= K``):

    - ``recall@k``: mean over users of (hits in the top k) / (the user's relevant items);
    - ``ndcg@k``: mean of DCG@k / ideal DCG@k, gain 1 per hit at rank r discounted by ``log2(r + 1)``,
      the ideal putting ``min(k, relevant)`` hits first;
    - ``coverage@k``: share of the ``num_items`` catalogue in at least one user's top k.
    """
    num_users, width = ranked.shape
    relevant_count = np.bincount(relevant_users, minlength=num_users)
    if (relevant_count == 0).any():
        raise ValueError(f"{int((relevant_count == 0).sum())} user(s) without relevant items; leave them out")
    relevant_codes = np.unique(relevant_users.astype(np.int64) * num_items + relevant_items)
    codes = np.arange(num_users, dtype=np.int64)[:, None] * num_items + ranked
    hits = np.isin(codes, relevant_codes) & (ranked >= 0)  # [U, K]
    discounts = 1.0 / np.log2(np.arange(2, width + 2))  # [K]
    metrics = {}
    for k in ks:
        if k > width:
            raise ValueError(f"k={k} is longer than the ranked lists ({width})")
        ideal = np.cumsum(discounts[:k])[np.minimum(relevant_count, k) - 1]
        metrics[f"recall@{k}"] = float(np.mean(hits[:, :k].sum(1) / relevant_count))
        metrics[f"ndcg@{k}"] = float(np.mean((hits[:, :k] * discounts[:k]).sum(1) / ideal))
        top = ranked[:, :k]
        metrics[f"coverage@{k}"] = len(np.unique(top[top >= 0])) / num_items
    return metrics
