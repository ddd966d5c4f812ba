"""How much each feature says about a dataset's first binary task, in each held-out split: one
single-feature predictor per feature, fitted on the training split (the positive rate per value,
shrunk toward the training base rate; numerics by training-quantile bins), scored by AUC on the
validation and on the test split. A feature whose AUC crosses 0.5 between the two predicts the
label one way in one period and the other way in the next: a model that uses it well on the
validation split loses with it on the test split.

    .venv-peers/bin/python benchmarks/peers/split_shift.py                 # ml100k
    .venv-peers/bin/python benchmarks/peers/split_shift.py --dataset generated

It reads (and if need be writes) the same split files as run.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

import datasets

SHRINKAGE = 10  # pseudo-rows at the base rate per value: rare values say little
NUMERIC_BINS = 10


def single_feature_scores(train: pd.DataFrame, frame: pd.DataFrame, column: str, label: str,
                          numeric: bool) -> np.ndarray:
    """Each row of ``frame``: the training split's shrunk positive rate of the row's value of ``column``."""
    base = train[label].mean()
    keys_train, keys = train[column], frame[column]
    if numeric:
        edges = np.unique(np.nanquantile(train[column].astype(float), np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
        keys_train = pd.Series(np.digitize(train[column].astype(float), edges), index=train.index)
        keys = pd.Series(np.digitize(frame[column].astype(float), edges), index=frame.index)
    counts = train.groupby(keys_train)[label].agg(["sum", "count"])
    rates = (counts["sum"] + SHRINKAGE * base) / (counts["count"] + SHRINKAGE)
    return keys.map(rates).fillna(base).to_numpy(dtype=float)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=datasets.NAMES, default="ml100k")
    parser.add_argument("--rows", type=int, default=600_000, help="rows of the generated log (as run.py)")
    parser.add_argument("--cache-dir", type=Path, default=datasets.default_cache())
    parser.add_argument("--ml100k-dir", type=Path, default=datasets.ML100K_DIR)
    args = parser.parse_args(argv)
    dataset = (datasets.generated(args.rows) if args.dataset == "generated"
               else datasets.ml100k(args.ml100k_dir, args.dataset))
    paths = datasets.prepare(dataset, args.cache_dir)
    frames = {split: pd.read_parquet(path) for split, path in paths.items()}
    label = next(name for name, kind in dataset.tasks if kind == "binary")
    print(f"{dataset.name} ({dataset.split}): single-feature AUC for {label}, each predictor fitted on the training "
          f"split\n")
    print("| feature | validation AUC | test AUC |\n|---|---|---|")
    for column in (*dataset.categorical, *dataset.numeric):
        aucs = [roc_auc_score(frames[split][label], single_feature_scores(
                    frames["train"], frames[split], column, label, column in dataset.numeric))
                for split in ("val", "test")]
        print(f"| {column} | {aucs[0]:.4f} | {aucs[1]:.4f} |")


if __name__ == "__main__":
    main()
