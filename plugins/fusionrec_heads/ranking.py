"""Ranking heads: a score per row, trained by comparing the rows of one group (a request, a
session, or a positive with its sampled negatives). Groups come from ``data.group`` or
``data.negatives``; ``Batch.groups`` numbers them, each group's rows contiguous.

- ``bpr``: pairwise, ``-log sigmoid(s_i - s_j)`` over the pairs of a group with ``label_i > label_j``.
- ``listwise``: softmax cross-entropy over a group's rows against its labels normalised to sum 1.

Both serve the raw score (only its order within a group means something) and report GAUC, MRR,
and NDCG@K and Recall@K for each K of ``top_k``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

from fusionrec.components import Dropout, PositiveInt, TaskHead
from fusionrec.components.head import as_tensor, numeric_labels
from fusionrec.errors import ConfigError, DataError
from fusionrec_heads.metrics import GroupAUC


def by_group(groups: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """``[B]`` group ids (each group's rows contiguous) and ``[B]`` values -> a ``[G, L]`` mask
    of real rows (L = the largest group) and each value as ``[G, L]``, padded with zeros."""
    _, group, sizes = torch.unique_consecutive(groups, return_inverse=True, return_counts=True)
    position = torch.arange(len(groups), device=groups.device) - (torch.cumsum(sizes, 0) - sizes)[group]
    shape = (len(sizes), int(sizes.max()))
    mask = torch.zeros(shape, dtype=torch.bool, device=groups.device)
    mask[group, position] = True
    padded = []
    for value in values:
        out = value.new_zeros(shape)
        out[group, position] = value
        padded.append(out)
    return (mask, *padded)


class RankingHead(TaskHead):
    """``[B, D_t] -> score [B]``. Labels are numbers >= 0: 1/0 (positive/negative), or grades
    (e.g. 0 skip, 1 click, 2 purchase). ``top_k``: the cut-offs of NDCG@K and Recall@K."""

    score_kind = "score"
    primary_metric = "gauc"
    needs_groups = True  # the data module asks for data.group or data.negatives

    def __init__(self, input_dim: int, label_state: dict, tower: list[PositiveInt] = (64,),
                 dropout: Dropout = 0.0, top_k: list[PositiveInt] = (10,)):
        super().__init__(input_dim, label_state, tower, dropout)
        self.output = nn.Linear(self.tower.output_dim, 1)
        self.top_k = [int(k) for k in top_k]

    @classmethod
    def fit_labels(cls, values: pd.Series, where: str, options: dict[str, Any]) -> dict:
        top_k = options.get("top_k", [10])
        if not isinstance(top_k, (list, tuple)) or not top_k or not all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in top_k):
            raise ConfigError(f"top_k of the {cls.__name__} labelled by {where}: expected a list of "
                              f"integers >= 1, e.g. [10], got {top_k!r}")
        cls.encode_labels(values, {}, where)
        return {}

    @classmethod
    def encode_labels(cls, values: pd.Series, state: dict, where: str) -> Tensor:
        numbers = numeric_labels(values, where)
        negative = numbers < 0
        if negative.any():
            position = int(np.flatnonzero(negative)[0])
            raise DataError(f"{where}: a ranking label must be >= 0 (0 = not relevant), found {numbers[position]:g} "
                            f"at row {values.index[position]} ({int(negative.sum())} such row(s))")
        return as_tensor(numbers, torch.float32)

    def forward(self, h: Tensor) -> Tensor:
        return self.output(self.tower(h)).squeeze(-1)

    def predict(self, output: Tensor) -> Tensor:
        return output

    @staticmethod
    def _require(groups: Tensor | None) -> Tensor:
        if groups is None:
            raise ConfigError("a ranking head got a batch without groups: set data.group (a request/session "
                              "column) or data.negatives (sampled negatives)")
        return groups

    def metrics(self) -> dict[str, Metric]:
        # "skip": a group without a positive has no rank to score (torchmetrics' default counts it as 0).
        metrics: dict[str, Metric] = {"gauc": GroupAUC(), "mrr": RetrievalMRR(empty_target_action="skip")}
        for k in self.top_k:
            metrics[f"ndcg@{k}"] = RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")
            metrics[f"recall@{k}"] = RetrievalRecall(top_k=k, empty_target_action="skip")
        return metrics

    def update_metrics(self, metrics: nn.ModuleDict, output: Tensor, target: Tensor,
                       groups: Tensor | None = None) -> None:
        groups = self._require(groups)
        relevant = target > 0
        # torchmetrics' Recall and MRR count a row with a score <= 0 as never retrieved; a raw score
        # can be any number, so they see its sigmoid (same order; float64 keeps it apart up to |s| ~ 36).
        scores = torch.sigmoid(output.double())
        for name, metric in metrics.items():
            # NDCG uses the grades as gains; the others only whether a row is relevant.
            metric.update(scores, target if name.startswith("ndcg") else relevant, indexes=groups)


class BPRHead(RankingHead):
    """Bayesian personalised ranking: the mean of ``-log sigmoid(s_i - s_j)`` over every pair of
    rows of one group with ``label_i > label_j`` in the batch. Groups without such a pair (no
    positive, one row) add nothing; a batch without any pair has loss 0."""

    def loss(self, output: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
        mask, scores, labels = by_group(self._require(groups), output, target)
        pairs = mask.unsqueeze(2) & mask.unsqueeze(1) & (labels.unsqueeze(2) > labels.unsqueeze(1))  # [G, L, L]
        if not pairs.any():
            return output.sum() * 0
        return nn.functional.softplus(scores.unsqueeze(1) - scores.unsqueeze(2))[pairs].mean()


class ListwiseHead(RankingHead):
    """Softmax cross-entropy over the rows of each group: ``-sum_i p_i log softmax(s)_i`` with
    ``p`` the group's labels divided by their sum (one positive: ``p`` is one-hot on it). The
    mean over groups with a positive and at least two rows; 0 when the batch has none."""

    def loss(self, output: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
        mask, scores, labels = by_group(self._require(groups), output, target)
        log_p = torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=1).masked_fill(~mask, 0)
        totals = labels.sum(1)
        scored = (totals > 0) & (mask.sum(1) > 1)
        if not scored.any():
            return output.sum() * 0
        target_p = labels[scored] / totals[scored].unsqueeze(1)
        return -(target_p * log_p[scored]).sum(1).mean()
