"""Preprocessing for the peers, which take ready-made arrays rather than raw columns: one
function, used for torch-rechub and DeepCTR-Torch alike, fitted on the training split only --
what both projects' examples do with scikit-learn encoders, with unseen values handled:

- categorical: a vocabulary of every value in the training split (most frequent first); a value
  maps to 1..V, an unseen or missing value to 0 (a shared out-of-vocabulary id); table size V + 1.
  (fusionrec does the same with its defaults, min_count 1, plus a reserved padding id.)
- numeric: missing values filled with the training mean, then standardised with the training mean
  and standard deviation. (fusionrec also standardises, and adds a missing flag per value.)
- labels: the raw label columns as float32, one column per task, in the dataset's task order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class PeerInputs:
    x: dict[str, dict[str, np.ndarray]]   # split -> feature -> array [N]
    y: dict[str, np.ndarray]              # split -> [N, tasks] float32
    vocab_sizes: dict[str, int]           # categorical feature -> embedding table rows (V + 1)
    frames: dict[str, pd.DataFrame]       # the raw splits (for labels in the metric code)


def _tokens(values: pd.Series) -> pd.Series:
    return values.astype("string")


def prepare(dataset, paths) -> PeerInputs:
    frames = {name: pd.read_parquet(path) for name, path in paths.items()}
    train = frames["train"]
    vocab_sizes, encoders, stats = {}, {}, {}
    for name in dataset.categorical:
        counts = _tokens(train[name]).dropna().value_counts(sort=True)
        vocabulary = pd.Index(counts.index, dtype="string")
        encoders[name] = vocabulary
        vocab_sizes[name] = len(vocabulary) + 1
    for name in dataset.numeric:
        values = pd.to_numeric(train[name], errors="raise").astype(float)
        mean, std = float(values.mean()), float(values.std(ddof=0))
        stats[name] = (mean, std if std > 0 else 1.0)
    x, y = {}, {}
    for split, frame in frames.items():
        features = {}
        for name, vocabulary in encoders.items():
            positions = vocabulary.get_indexer(_tokens(frame[name]))
            features[name] = np.where(positions < 0, 0, positions + 1).astype(np.int64)
        for name, (mean, std) in stats.items():
            values = pd.to_numeric(frame[name], errors="raise").astype(float).fillna(mean).to_numpy()
            features[name] = ((values - mean) / std).astype(np.float32)
        x[split] = features
        y[split] = np.stack([frame[task].to_numpy(dtype=np.float32) for task in dataset.task_names], axis=1)
    return PeerInputs(x, y, vocab_sizes, frames)
