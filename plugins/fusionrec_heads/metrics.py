"""Metrics torchmetrics does not ship."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import BinaryAUROC, MultilabelAUROC
from torchmetrics.utilities import dim_zero_cat

EPSILON = 1e-7


class BinaryLogLoss(MeanMetric):
    """Mean binary cross-entropy of probabilities; MeanMetric keeps the sums and syncs them across processes."""

    higher_is_better = False

    def update(self, probabilities: Tensor, target: Tensor) -> None:
        p = probabilities.double().clamp(EPSILON, 1 - EPSILON)
        t = target.double()
        super().update(-(t * p.log() + (1 - t) * (1 - p).log()))


class DefinedBinaryAUROC(BinaryAUROC):
    """AUC, or NaN where it is not defined: rows of one class only. torchmetrics returns 0 there,
    which reads as the worst possible model; the metrics table prints NaN as "n/a"."""

    def compute(self) -> Tensor:
        # A list of batches, or one tensor once synchronised across processes.
        target = dim_zero_cat(self.target) if len(self.target) else None
        if target is None or bool(target.min() == target.max()):
            return torch.tensor(float("nan"), device=self.device)
        return super().compute()


class PresentLabelsAUROC(MultilabelAUROC):
    """Macro AUC over the labels that have both positive and negative rows in the evaluated data.

    torchmetrics scores a label with no positives as 0 and averages it in, so one genre absent from
    a test split would cap the macro AUC below 1."""

    def __init__(self, num_labels: int):
        super().__init__(num_labels, average="none")

    def compute(self) -> Tensor:
        per_label = super().compute()
        target = dim_zero_cat(self.target)
        positives = target.sum(0)
        present = (positives > 0) & (positives < target.shape[0])
        return per_label[present].mean() if present.any() else torch.tensor(float("nan"))


class GroupAUC(Metric):
    """GAUC: the AUC of each group (request, user), averaged weighted by the group's number of
    rows; groups with only positives or only negatives are skipped. A row is positive when its
    target is > 0; tied scores count half, as in the Mann-Whitney statistic.

    Every row is kept (``cat`` states) so that a group split across batches or processes is
    scored whole; group ids must be unique within the evaluated split.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("indexes", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, indexes: Tensor) -> None:
        """``preds``, ``target``, ``indexes``: ``[B]`` scores, labels and group ids."""
        self.preds.append(preds.detach().double())
        self.target.append((target > 0).double())
        self.indexes.append(indexes.long())

    def compute(self) -> Tensor:
        preds, target, indexes = dim_zero_cat(self.preds), dim_zero_cat(self.target), dim_zero_cat(self.indexes)
        # Sort by group, then score: each group becomes a contiguous, ascending run.
        order = torch.argsort(preds, stable=True)
        order = order[torch.argsort(indexes[order], stable=True)]
        preds, target, indexes = preds[order], target[order], indexes[order]
        _, group, sizes = torch.unique_consecutive(indexes, return_inverse=True, return_counts=True)
        # Runs of equal scores within a group share their average 1-based rank.
        new_run = torch.ones_like(indexes, dtype=torch.bool)
        new_run[1:] = (indexes[1:] != indexes[:-1]) | (preds[1:] != preds[:-1])
        run = torch.cumsum(new_run, 0) - 1
        run_sizes = torch.bincount(run)
        run_starts = torch.cumsum(run_sizes, 0) - run_sizes
        group_starts = torch.cumsum(sizes, 0) - sizes
        rank = (run_starts - group_starts[group[new_run.nonzero().squeeze(1)]])[run] + (run_sizes[run] + 1) / 2
        positives = torch.bincount(group, weights=target, minlength=len(sizes))
        negatives = sizes - positives
        rank_sum = torch.bincount(group, weights=rank * target, minlength=len(sizes))
        scored = (positives > 0) & (negatives > 0)
        if not scored.any():
            return torch.tensor(float("nan"))
        auc = (rank_sum[scored] - positives[scored] * (positives[scored] + 1) / 2) / (positives[scored] * negatives[scored])
        return (auc * sizes[scored]).sum() / sizes[scored].sum()
