"""Held-out metrics, the same code for every framework: each adapter hands over its predicted
probabilities (binary tasks) or values (regression) for the validation and the test split in file
row order, and the labels come from the split's Parquet file itself, never from a framework's own
label encoding."""

from __future__ import annotations

import numpy as np

# Both held-out splits, scored with the model each framework ends with. The test split makes the
# table; the validation split shows whether a framework's lead there holds on another period (on
# ml-100k, split by time, the two periods can disagree).
EVALUATED_SPLITS = ("val", "test")
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before the logloss, for every framework alike


def task_metrics(kind: str, labels: np.ndarray, predictions: np.ndarray,
                 weights: np.ndarray | None = None) -> dict[str, float]:
    """``weights``: one per row (``user_bootstrap.py``'s resampled users); none = every row once."""
    from sklearn.metrics import log_loss, mean_squared_error, roc_auc_score

    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} rows")
    if not np.isfinite(predictions).all():
        return {"auc": float("nan"), "logloss": float("nan")} if kind == "binary" else {"rmse": float("nan")}
    if kind == "binary":
        probabilities = np.clip(predictions, EPS, 1 - EPS)
        return {"auc": float(roc_auc_score(labels, probabilities, sample_weight=weights)),
                "logloss": float(log_loss(labels, probabilities, labels=[0, 1], sample_weight=weights))}
    if kind == "regression":
        return {"rmse": float(np.sqrt(mean_squared_error(labels, predictions, sample_weight=weights)))}
    raise ValueError(f"unknown task kind {kind!r}")


def all_metrics(tasks, frame, predictions: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``tasks``: ``[(name, kind), ...]``; ``predictions[name]``: one score per row of ``frame`` (a
    split's file), in file order."""
    return {name: task_metrics(kind, frame[name].to_numpy(), predictions[name]) for name, kind in tasks}
