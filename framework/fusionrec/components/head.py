"""Task heads: a task's representation in, its output, loss, metrics and served score."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from fusionrec.components.options import Dropout, PositiveInt
from fusionrec.errors import DataError, describe_value
from fusionrec.modules.feedforward import FeedForward


class TaskHead(nn.Module):
    """Base of every head plugin: ``(input_dim, label_state, tower=[64], dropout=0.0, **options)``.

    Labels are the head's business, so that a third-party head can bring its own label type:
    ``fit_labels`` learns plain-data state on the training split (e.g. the class list) and
    ``encode_labels`` validates and tensorises the labels of any split with it. Every option of
    the head is passed to ``fit_labels`` too.

    ``forward(h: [B, D_t])`` returns the raw output (logits or values); ``loss``, ``predict``
    (the served score: ``score_kind``) and ``update_metrics`` take that output. ``groups`` (``[B]``
    or None) numbers the group of each row for ranking heads; pointwise heads ignore it.

    A conditional head (``parent`` set to another task's name) is called as
    ``forward(h, parent_output)`` after its parent, and its target is
    ``stack([parent_target, own_target], -1)``.

    What a head needs from the data and gives to other tasks is declared in class attributes:
    ``needs_groups`` (the head compares the rows of a group, so the config must give
    ``data.group`` or ``data.negatives``) and ``can_be_parent`` (its output is one logit per row,
    ``[B]``, whose sigmoid is the probability of an event, so a conditional task may follow it).
    ``primary_metric`` names the one metric of ``metrics()`` that sums the task up in fit's
    per-epoch summary (``"loss"``, the task's validation loss, when a head names none).
    """

    score_kind = "value"
    primary_metric = "loss"
    parent: str | None = None
    needs_groups = False
    can_be_parent = False

    def __init__(self, input_dim: int, label_state: dict, tower: list[PositiveInt] = (64,),
                 dropout: Dropout = 0.0):
        super().__init__()
        self.label_state = label_state
        self.tower = FeedForward(input_dim, list(tower), dropout=dropout)

    # --- labels (class methods: they run in the data pipeline, before any model exists) ---

    @classmethod
    def fit_labels(cls, values: pd.Series, where: str, options: dict[str, Any]) -> dict:
        return {}

    @classmethod
    def encode_labels(cls, values: pd.Series, state: dict, where: str) -> Tensor:
        raise NotImplementedError

    # --- model side ---

    def forward(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, output: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def predict(self, output: Tensor) -> Tensor:
        raise NotImplementedError

    def metrics(self) -> dict[str, Metric]:
        raise NotImplementedError

    def update_metrics(self, metrics: nn.ModuleDict, output: Tensor, target: Tensor,
                       groups: Tensor | None = None) -> None:
        scores = self.predict(output)
        for metric in metrics.values():
            metric.update(scores, target)


def numeric_labels(values: pd.Series, where: str) -> np.ndarray:
    """Labels as float64, failing on a missing or non-numeric value with its row number."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(numbers)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        kind = "missing (NaN)" if pd.isna(values.iloc[position]) else "not a finite number"
        raise DataError(f"{where}: label {describe_value(values, position)} is {kind}; "
                        f"{int(bad.sum())} row(s) like it")
    return numbers


def as_tensor(values: np.ndarray, dtype: torch.dtype) -> Tensor:
    return torch.tensor(values, dtype=dtype)


class BinaryLabels:
    """The label side of a head whose labels are 0/1, or any number with the task's ``threshold`` set
    (positive when ``label >= threshold``, e.g. ``liked = rating >= 4``): listed before TaskHead."""

    @classmethod
    def fit_labels(cls, values: pd.Series, where: str, options: dict[str, Any]) -> dict:
        return {"threshold": options.get("threshold")}

    @classmethod
    def encode_labels(cls, values: pd.Series, state: dict, where: str) -> Tensor:
        numbers = numeric_labels(values, where)
        if state["threshold"] is not None:
            return as_tensor(numbers >= state["threshold"], torch.float32)
        outside = (numbers != 0) & (numbers != 1)
        if outside.any():
            position = int(np.flatnonzero(outside)[0])
            raise DataError(f"{where}: a binary label must be 0 or 1, found {describe_value(values, position)} "
                            f"({int(outside.sum())} such row(s)); set the task's 'threshold' to binarise it")
        return as_tensor(numbers, torch.float32)
