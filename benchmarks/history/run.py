"""Does the user's history help? Test metrics without history and with each history encoder, over
several training seeds, the same epoch budget for every variant.

Datasets:

- ``ml100k-per-user``: MovieLens 100K split within each user by time (80/10/10, the per-user protocol
  of ``benchmarks/peers``, its split files reused), tasks ``liked`` (rating >= 4) and ``rating``;
  the history is the user's 50 latest earlier rated movies (every rating, any score), sharing
  ``item_id``'s vocabulary and embedding table.
- ``generated``: the quickstart's log (``fusionrec.data.synthetic``, no media) with
  ``interest_drift: 1.0`` -- each user's interest drifts from one item category to another, which only
  the history reveals -- split by time 80/10/10, tasks ``click``, ``like``, ``watch_time``; the history
  is the user's 10 latest earlier clicked items, each with its ``item_category`` riding along.

Variants: ``none`` (no history field), ``sequence_mean``, ``din``, ``sasrec`` (the history field's
encoder). Each run is one child process (``--one``), one at a time, with ``--threads`` torch threads;
it trains with ``fusionrec``'s defaults plus the settings below, then tests the best checkpoint.

    .venv/bin/python benchmarks/history/run.py --threads 1                       # the table in README.md
    .venv/bin/python benchmarks/history/run.py --datasets ml100k-per-user --seeds 0 --epochs 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VARIANTS = ("none", "sequence_mean", "din", "sasrec")
# MovieLens: the user's last 50 ratings; generated: the last 10 clicks, about as many as a drifting
# interest lasts (its THEME_LENGTH is 8 events, of which about half are clicks).
HISTORY_LENGTH = {"ml100k-per-user": 50, "generated": 10}
TASKS = {
    "ml100k-per-user": {"liked": {"head": "binary"}, "rating": {"head": "regression"}},
    "generated": {"click": {"head": "binary"}, "like": {"head": "binary"}, "watch_time": {"head": "regression"}},
}
GENERATED_LOG = {"rows": 200_000, "users": 5_000, "items": 3_000, "seed": 0, "interest_drift": 1.0}


def data_section(dataset: str, cache: Path) -> dict:
    if dataset == "ml100k-per-user":
        sys.path.insert(0, str(REPO / "benchmarks" / "peers"))
        import datasets  # the peer benchmark's split, reused

        paths = datasets.prepare(datasets.ml100k(datasets.ML100K_DIR, dataset), cache)
        features = {name: {"type": "categorical"} for name in ("user_id", "item_id", "gender", "occupation",
                                                               "release_year")}
        features["age"] = {"type": "numeric"}
        history = {"user": "user_id", "time": "timestamp", "item": "item_id"}
        return {**{split: str(path) for split, path in paths.items()}, "features": features,
                "history": {"type": "sequence", "max_length": HISTORY_LENGTH[dataset], "vocabulary": "item_id",
                            "history": history}}
    from fusionrec.data.synthetic import quickstart_log

    features = {name: {"type": "categorical"} for name in ("user_id", "item_id", "user_segment", "item_category")}
    features.update({name: {"type": "multi_categorical", "separator": "|", "max_length": 4}
                     for name in ("user_interests", "item_tags")})
    features.update({name: {"type": "numeric"} for name in ("user_age", "item_price", "hour")})
    features["item_embedding"] = {"type": "vector"}
    history = {"user": "user_id", "time": "timestamp", "item": "item_id", "positive": {"column": "click"}}
    return {"path": str(quickstart_log(**GENERATED_LOG, directory=cache)),
            "split": {"method": "time", "ratios": [0.8, 0.1, 0.1], "time_column": "timestamp"},
            "features": features,
            "history": {"type": "sequence", "max_length": HISTORY_LENGTH[dataset], "vocabulary": "item_id",
                        "history": history, "side": ["item_category"]}}


def config(dataset: str, variant: str, epochs: int, cache: Path) -> dict:
    data = data_section(dataset, cache)
    history = data.pop("history")
    model: dict = {"tasks": TASKS[dataset]}
    if variant != "none":
        data["features"]["history"] = history
        model["encoders"] = {"history": {"name": variant}}
    return {"trainer": {"max_epochs": epochs, "enable_progress_bar": False}, "data": {**data, "batch_size": 1024},
            "model": model}


def run_one(dataset: str, variant: str, seed: int, epochs: int, cache: Path, workdir: Path) -> dict:
    """One fit and test in this process: test metrics and training rows/s."""
    import lightning.pytorch as pl
    import yaml

    from fusionrec.cli import make_cli

    class TrainClock(pl.Callback):
        seconds, rows = 0.0, 0

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.rows += len(batch)
            self.last = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds += self.last - self.start

    sys.argv = sys.argv[:1]  # this script's own arguments are not for LightningCLI (it warns when it sees both)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config(dataset, variant, epochs, cache), sort_keys=False))
    cli = make_cli(["--config", str(path), "--seed_everything", str(seed), "--trainer.default_root_dir",
                    str(workdir)], run=False)
    clock = TrainClock()
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    [metrics] = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    return {"metrics": {key: float(value) for key, value in metrics.items()},
            "rows_per_second": clock.rows / clock.seconds}


def summary(results: list[dict]) -> str:
    """One markdown row per dataset x variant: mean ± sd over seeds of each test metric, and rows/s."""
    lines = []
    keys = sorted({key for result in results for key in result["metrics"] if key.startswith("test/")
                   and key.rsplit("/", 1)[-1] in ("auc", "rmse", "logloss")})
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        lines += [f"\n{dataset}\n", "| history | " + " | ".join(k.removeprefix("test/") for k in keys
                                                                 if any(k in r["metrics"] for r in results
                                                                        if r["dataset"] == dataset))
                  + " | train rows/s |"]
        shown = [k for k in keys if any(k in r["metrics"] for r in results if r["dataset"] == dataset)]
        lines.append("|" + "---|" * (len(shown) + 2))
        for variant in VARIANTS:
            runs = [r for r in results if r["dataset"] == dataset and r["variant"] == variant]
            if not runs:
                continue
            cells = []
            for key in shown:
                values = [r["metrics"][key] for r in runs]
                spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
                cells.append(f"{statistics.mean(values):.4f}{spread}")
            speed = statistics.mean(r["rows_per_second"] for r in runs)
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {speed:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ml100k-per-user", "generated"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get(
        "FUSIONREC_BENCH_CACHE", Path(tempfile.gettempdir()) / "fusionrec-bench")))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", nargs=3, metavar=("DATASET", "VARIANT", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        dataset, variant, seed = args.one
        with tempfile.TemporaryDirectory() as workdir:
            result = run_one(dataset, variant, int(seed), args.epochs, args.cache_dir, Path(workdir))
        args.out.write_text(json.dumps(result))
        return
    results = []
    for dataset in args.datasets:
        for variant in args.variants:
            for seed in args.seeds:
                with tempfile.NamedTemporaryFile(suffix=".json") as out:
                    command = [sys.executable, __file__, "--one", dataset, variant, str(seed), "--out", out.name,
                               "--epochs", str(args.epochs), "--cache-dir", str(args.cache_dir)]
                    if args.threads:
                        command += ["--threads", str(args.threads)]
                    started = time.perf_counter()
                    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                    result = json.loads(Path(out.name).read_text())
                results.append({"dataset": dataset, "variant": variant, "seed": seed, **result})
                print(f"{dataset} {variant} seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(summary(results))


if __name__ == "__main__":
    main()
