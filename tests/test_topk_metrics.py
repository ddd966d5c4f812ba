"""Recall@K, NDCG@K and coverage on lists small enough to work out by hand; EASE against its formula;
the fused score's product and sum."""

from __future__ import annotations

import importlib.util
from math import log2
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_normalized_dcg, retrieval_recall

from fusionrec.errors import ConfigError
from fusionrec.recommend import FusedScore, topk_metrics

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "topk_ml100k.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("topk_ml100k", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_metrics_match_hand_computed_values():
    # 5 items. User 0: ranked 3, 1, 4; relevant 1 and 2 (one hit, at rank 2).
    # User 1: ranked 0, 3, -1 (only two candidates); relevant 0 (hit at rank 1).
    ranked = np.array([[3, 1, 4], [0, 3, -1]])
    metrics = topk_metrics(ranked, np.array([0, 0, 1]), np.array([1, 2, 0]), num_items=5, ks=[1, 2, 3])
    assert metrics["recall@1"] == pytest.approx((0 + 1) / 2)
    assert metrics["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    user0_ndcg2 = (1 / log2(3)) / (1 + 1 / log2(3))  # ideal: both relevant items at ranks 1 and 2
    assert metrics["ndcg@1"] == pytest.approx((0 + 1) / 2)
    assert metrics["ndcg@2"] == pytest.approx((user0_ndcg2 + 1) / 2)
    assert metrics["coverage@1"] == pytest.approx(2 / 5)  # items 3 and 0
    assert metrics["coverage@2"] == pytest.approx(3 / 5)  # 3, 1, 0
    assert metrics["coverage@3"] == pytest.approx(4 / 5)  # 3, 1, 4, 0 (-1 is no item)
    assert metrics["recall@3"] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics["ndcg@3"] == pytest.approx((user0_ndcg2 + 1) / 2)
    assert set(metrics) == {f"{name}@{k}" for name in ("recall", "ndcg", "coverage") for k in (1, 2, 3)}


def test_metrics_agree_with_torchmetrics_per_query():
    generator = np.random.default_rng(0)
    num_users, num_items, k = 30, 40, 10
    scores = generator.normal(size=(num_users, num_items))
    relevance = generator.random((num_users, num_items)) < 0.15
    relevance[np.arange(num_users), generator.integers(0, num_items, num_users)] = True  # at least one each
    ranked = np.argsort(-scores, axis=1)[:, :k]
    users, items = np.nonzero(relevance)
    metrics = topk_metrics(ranked, users, items, num_items, [5, k])
    for cut in (5, k):
        recall = np.mean([retrieval_recall(torch.tensor(s), torch.tensor(r), top_k=cut).item()
                          for s, r in zip(scores, relevance)])
        ndcg = np.mean([retrieval_normalized_dcg(torch.tensor(s), torch.tensor(r), top_k=cut).item()
                        for s, r in zip(scores, relevance)])
        assert metrics[f"recall@{cut}"] == pytest.approx(recall, abs=1e-6)
        assert metrics[f"ndcg@{cut}"] == pytest.approx(ndcg, abs=1e-6)


def test_a_user_without_relevant_items_is_refused():
    with pytest.raises(ValueError, match="1 user"):
        topk_metrics(np.array([[0], [1]]), np.array([0]), np.array([0]), num_items=2, ks=[1])


def test_ease_weights_are_each_items_ridge_regression_on_the_others():
    history = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=float)
    regularisation = 0.5
    weights = load_benchmark().ease_weights(history, regularisation)
    # EASE: min ||X - X B||^2 + lambda ||B||^2 with diag(B) = 0, which splits into one ridge
    # regression per item j of X_j on the other items' columns.
    expected = np.zeros((4, 4))
    for j in range(4):
        others = [i for i in range(4) if i != j]
        x = history[:, others]
        expected[others, j] = np.linalg.solve(x.T @ x + regularisation * np.eye(3), x.T @ history[:, j])
    assert weights == pytest.approx(expected, abs=1e-10)


def test_fused_product_and_sum():
    scores = {"click": torch.tensor([0.9, 0.5]), "like": torch.tensor([0.1, 0.8]),
              "watch_time": torch.tensor([3.0, -2.0])}
    product = FusedScore.parse("{click: 1, like: 0.5, watch_time: {weight: 0.2, offset: 1}}", "product",
                               list(scores))
    expected = [0.9 * 0.1 ** 0.5 * 4 ** 0.2, 0.0]  # 1 + (-2) < 0 counts as 0
    assert product(scores).tolist() == pytest.approx(expected)
    total = FusedScore.parse({"click": 1, "like": 2}, "sum", list(scores))
    assert total(scores).tolist() == pytest.approx([0.9 + 0.2, 0.5 + 1.6])
    # The orders differ: the product prefers item 0 (click-heavy), the sum item 1.
    assert product(scores)[0] > product(scores)[1] and total(scores)[1] > total(scores)[0]


@pytest.mark.parametrize("spec, combine, message", [
    ("{click: 1, share: 1}", "product", "no task 'share'; tasks: click, like"),
    ("[click]", "product", "expected a mapping of task to weight"),
    ("{click: {weight: 1, power: 2}}", "product", "expected {weight: NUMBER, offset: NUMBER}"),
    ("{click: high}", "product", "weight must be a number"),
    ("{click: 1}", "max", "--combine: expected one of product, sum"),
])
def test_fused_score_rejects_bad_specs(spec, combine, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("[", r"\[")):
        FusedScore.parse(spec, combine, ["click", "like"])


def test_a_multi_output_task_cannot_be_fused():
    score = FusedScore.parse("{genres: 1}", "product", ["genres"])
    with pytest.raises(ConfigError, match="serves 3 scores per row"):
        score({"genres": torch.rand(4, 3)})
