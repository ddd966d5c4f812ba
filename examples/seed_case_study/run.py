"""The seed article's multi-task case study, done correctly with fusionrec.

Writes a small deterministic data set (two numeric features x1, x2; a binary label y_class and a
continuous label y_reg, both functions of x1 and x2 plus noise) as train/val/test CSV files, trains
one shared-layer model on both tasks jointly with ``fusionrec fit`` (config.yaml next to this
file), scores the held-out test rows with ``fusionrec predict``, and prints the classification
accuracy and the regression MSE next to what a constant predictor gets.

    .venv/bin/python examples/seed_case_study/run.py [--out DIR] [--rows N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusionrec.cli import main as fusionrec

CONFIG = Path(__file__).with_name("config.yaml")
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
NOISE_STD = 0.2  # of y_reg: the lowest MSE any model can reach is NOISE_STD**2 = 0.04


def make_data(rows: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Both labels depend on the same two features, so one shared layer serves both tasks.

    y_class = 1[x1 + x2 + e > 0], e ~ N(0, 0.25^2): about half the rows are positive, and the
        best possible accuracy is about 0.94.
    y_reg = 2 + 1.5 x1 - x2 + 0.5 x1^2 + e, e ~ N(0, 0.2^2): variance about 3.8, best MSE 0.04.
    """
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    y_class = (x1 + x2 + rng.normal(0.0, 0.25, rows) > 0).astype(int)
    y_reg = 2.0 + 1.5 * x1 - x2 + 0.5 * x1**2 + rng.normal(0.0, NOISE_STD, rows)
    return pd.DataFrame({"x1": x1.round(4), "x2": x2.round(4), "y_class": y_class, "y_reg": y_reg.round(4)})


def write_splits(frame: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Rows are i.i.d., so consecutive blocks are a fair random split."""
    ends = np.cumsum([round(share * len(frame)) for share in SPLITS.values()])
    ends[-1] = len(frame)
    paths = {}
    for name, start, end in zip(SPLITS, [0, *ends[:-1]], ends):
        paths[name] = out / f"{name}.csv"
        frame.iloc[start:end].to_csv(paths[name], index=False)
    return paths


def run(out: Path, rows: int = 4000) -> dict[str, float]:
    # A model of ~100 weights gains nothing from intra-op threads, and on a busy machine their
    # spin-waiting makes each step many times slower: train on one thread, then restore the setting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, rows)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, rows: int) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    paths = write_splits(make_data(rows), out)
    data_args = [f"--data.{name}={path}" for name, path in paths.items()]
    runs = out / "runs"
    if fusionrec(["fit", "--config", str(CONFIG), *data_args, f"--trainer.default_root_dir={runs}"]) != 0:
        raise SystemExit("fusionrec fit failed")
    checkpoint = max(runs.glob("lightning_logs/version_*/checkpoints/epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    scores = out / "test_predictions.parquet"
    if fusionrec(["predict", "--config", str(CONFIG), *data_args, f"--trainer.default_root_dir={runs}",
                  f"--ckpt_path={checkpoint}", f"--output={scores}"]) != 0:
        raise SystemExit("fusionrec predict failed")

    test = pd.read_csv(paths["test"])
    predicted = pd.read_parquet(scores)  # one row per test row, in order
    assert len(predicted) == len(test)
    y_class, y_reg = test["y_class"].to_numpy(), test["y_reg"].to_numpy()
    positive_rate = float(y_class.mean())
    results = {
        "test_rows": len(test),
        "accuracy": float(((predicted["classification"].to_numpy() >= 0.5) == y_class).mean()),
        "majority_class_rate": max(positive_rate, 1 - positive_rate),
        "mse": float(((predicted["regression"].to_numpy() - y_reg) ** 2).mean()),
        "label_variance": float(y_reg.var()),  # the MSE of always predicting the test mean
        "noise_floor_mse": NOISE_STD**2,
        "checkpoint": str(checkpoint),
    }
    return results


def report(results: dict[str, float]) -> str:
    return "\n".join([
        f"seed case study, {results['test_rows']} held-out test rows:",
        f"  classification accuracy: {results['accuracy']:.4f}   "
        f"(majority-class rate {results['majority_class_rate']:.4f})",
        f"  regression MSE:          {results['mse']:.4f}   "
        f"(label variance {results['label_variance']:.4f}; noise floor {results['noise_floor_mse']:.4f})",
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the data, logs, checkpoint and predictions (default: a new temp dir)")
    parser.add_argument("--rows", type=int, default=4000, help="rows to generate (default 4000)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fusionrec_seed_case_study_"))
    results = run(out, args.rows)
    print(report(results))
    print(f"  (data, logs and predictions in {out})")
    if args.json:
        print(json.dumps(results))
    sys.exit(0)
