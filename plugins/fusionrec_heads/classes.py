"""Multiclass (one class per row) and multilabel (a set of classes per row) heads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MultilabelF1Score

from fusionrec.components import Dropout, PositiveInt, TaskHead
from fusionrec.errors import DataError, describe_value
from fusionrec_heads.metrics import PresentLabelsAUROC


def _class_names(values: pd.Series, where: str) -> pd.Series:
    if values.isna().any():
        raise DataError(f"{where}: label {describe_value(values, int(np.flatnonzero(values.isna())[0]))} is missing")
    if pd.api.types.is_float_dtype(values) and values.mod(1).eq(0).all():
        values = values.astype("int64")
    return values.astype(str)


def _unknown_class_error(where: str, values: pd.Series, positions: np.ndarray, unknown: np.ndarray) -> DataError:
    position = int(positions[np.flatnonzero(unknown)[0]])
    return DataError(f"{where}: label {describe_value(values, position)} is a class the training split never "
                     f"shows ({int(unknown.sum())} such value(s))")


class MulticlassHead(TaskHead):
    """``[B, D_t] -> logits [B, C]`` with cross-entropy; serves the class probabilities.
    The classes are the label values seen in the training split."""

    score_kind = "distribution"
    primary_metric = "accuracy"

    def __init__(self, input_dim: int, label_state: dict, tower: list[PositiveInt] = (64,),
                 dropout: Dropout = 0.0):
        super().__init__(input_dim, label_state, tower, dropout)
        self.num_classes = len(label_state["classes"])
        self.output = nn.Linear(self.tower.output_dim, self.num_classes)

    @classmethod
    def fit_labels(cls, values: pd.Series, where: str, options: dict[str, Any]) -> dict:
        classes = sorted(_class_names(values, where).unique())
        if len(classes) < 2:
            raise DataError(f"{where}: a multiclass label needs at least 2 classes in the training split, found {classes}")
        return {"classes": classes}

    @classmethod
    def encode_labels(cls, values: pd.Series, state: dict, where: str) -> Tensor:
        index = pd.Index(state["classes"]).get_indexer(_class_names(values, where))
        if (index < 0).any():
            raise _unknown_class_error(where, values, np.arange(len(values)), index < 0)
        return torch.from_numpy(index.astype(np.int64))

    def forward(self, h: Tensor) -> Tensor:
        return self.output(self.tower(h))

    def loss(self, output: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
        return nn.functional.cross_entropy(output, target)

    def predict(self, output: Tensor) -> Tensor:
        return torch.softmax(output, dim=-1)

    def metrics(self) -> dict[str, Metric]:
        return {"accuracy": MulticlassAccuracy(self.num_classes, average="micro"),
                "macro_f1": MulticlassF1Score(self.num_classes, average="macro")}


class MultilabelHead(TaskHead):
    """``[B, D_t] -> logits [B, C]``, one sigmoid per class; serves the per-class probabilities.
    Labels are ``separator``-joined strings (``"Action|Comedy"``) or list cells."""

    score_kind = "probability"
    primary_metric = "auc"

    def __init__(self, input_dim: int, label_state: dict, tower: list[PositiveInt] = (64,),
                 dropout: Dropout = 0.0, separator: str = "|"):
        super().__init__(input_dim, label_state, tower, dropout)
        self.num_classes = len(label_state["classes"])
        self.output = nn.Linear(self.tower.output_dim, self.num_classes)

    @staticmethod
    def _exploded(values: pd.Series, separator: str, where: str) -> pd.Series:
        """One entry per (row, class), indexed by the row's position in ``values``."""
        if values.isna().any():
            raise DataError(f"{where}: label {describe_value(values, int(np.flatnonzero(values.isna())[0]))} "
                            f"is missing (use an empty string for no class)")
        lists = values.str.split(separator) if isinstance(values.iloc[0], str) else values
        return lists.reset_index(drop=True).explode().dropna().astype(str).loc[lambda s: s != ""]

    @classmethod
    def fit_labels(cls, values: pd.Series, where: str, options: dict[str, Any]) -> dict:
        separator = options.get("separator", "|")
        classes = sorted(cls._exploded(values, separator, where).unique())
        if not classes:
            raise DataError(f"{where}: a multilabel label has no classes in the training split")
        return {"classes": classes, "separator": separator}

    @classmethod
    def encode_labels(cls, values: pd.Series, state: dict, where: str) -> Tensor:
        exploded = cls._exploded(values, state["separator"], where)
        index = pd.Index(state["classes"]).get_indexer(exploded)
        if (index < 0).any():
            raise _unknown_class_error(where, values, exploded.index.to_numpy(), index < 0)
        multi_hot = torch.zeros(len(values), len(state["classes"]))
        multi_hot[torch.from_numpy(exploded.index.to_numpy()), torch.from_numpy(index)] = 1.0
        return multi_hot

    def forward(self, h: Tensor) -> Tensor:
        return self.output(self.tower(h))

    def loss(self, output: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(output, target)

    def predict(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output)

    def metrics(self) -> dict[str, Metric]:
        return {"auc": PresentLabelsAUROC(self.num_classes),
                "micro_f1": MultilabelF1Score(self.num_classes, average="micro")}

    def update_metrics(self, metrics: nn.ModuleDict, output: Tensor, target: Tensor,
                       groups: Tensor | None = None) -> None:
        super().update_metrics(metrics, output, target.long())
