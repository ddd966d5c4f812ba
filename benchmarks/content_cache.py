"""Epoch cost of a frozen, cached text encoder against an id-only model on the same rows.

What it does:

1. Generates (numpy, seeded) a click log -- ``--rows`` rows over ``--items`` items whose hidden
   vectors drive the clicks -- and the items' titles, PNGs and WAVs with
   ``fusionrec.data.synthetic_media.write_item_media``, all under ``--workdir`` (outside the repo);
   the log is written as Parquet with an ``item_title`` column. Reused when already there.
2. Builds a text encoder of realistic size that needs no network: a BERT with the shape of
   all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, intermediate 1536, ~22M parameters) with random
   weights and a WordPiece vocabulary of the title words, written with ``save_pretrained`` so that it
   is read through the real ``from_pretrained`` path. ``--text-model DIR`` uses a local model instead.
3. Trains through ``fusionrec.cli.make_cli(argv, run=False)`` + ``trainer.fit`` (the ``fusionrec fit``
   defaults, minus validation, checkpoints and logger), all rows in the training split, CPU,
   ``--threads`` torch threads:

   a. id-only: user_id, item_id, category_id, hour;
   b. the same plus ``item_title: {type: text}`` with the text encoder frozen: its features are
      computed once per distinct title in ``setup`` (the cache fill, timed by wrapping
      ``FeatureCache.features``) and every epoch runs only the projection;
   c. the text encoder with ``mode: finetune``: no cache, the backbone runs (and trains) every step;
      only ``--finetune-batches`` batches are run and its epoch cost is extrapolated.

   (a) and (b) run ``--epochs`` epochs each, alternately ``--repeats`` times (a, b, a, b, ...) so that
   both see the same background load; the table shows medians. An epoch's time runs from
   ``on_train_epoch_start`` to its last ``on_train_batch_end``. The feature cache starts empty
   (``FUSIONREC_CACHE_DIR`` under ``--workdir``, cleared at start); finally (b) is fitted once more
   in a fresh process, which must read every title's features from disk (0 computed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def write_log(args: argparse.Namespace) -> Path:
    """The click log (reused when present) and the items' media; returns the Parquet path."""
    import pandas as pd

    from fusionrec.data.synthetic_media import write_item_media

    path = args.workdir / f"log-{args.rows}-{args.items}-{args.seed}.parquet"
    rng = np.random.default_rng(args.seed)
    item_vec = rng.normal(0, 1, (args.items, 4))
    items = write_item_media(item_vec, args.workdir / "media", seed=args.seed)  # reused when complete
    if path.is_file():
        return path
    users = args.items * 6
    user_vec = rng.normal(0, 1, (users, 2))
    user, item = rng.integers(0, users, args.rows), rng.integers(0, args.items, args.rows)
    logit = 1.5 * item_vec[item, 0] + 0.7 * (user_vec[user] * item_vec[item, 1:3]).sum(1) - 1.0
    log = pd.DataFrame({"user_id": user, "item_id": item, "category_id": (item * 7919) % 40,
                        "hour": rng.integers(0, 24, args.rows),
                        "click": (rng.random(args.rows) < 1 / (1 + np.exp(-logit))).astype(int)})
    log = log.merge(items[["item_id", "item_title"]], on="item_id", how="left")
    log.to_parquet(path, index=False)
    return path


def minilm_shaped_bert(directory: Path) -> Path:
    """A random BERT shaped like all-MiniLM-L6-v2, vocabulary = the title words + special tokens."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.models.bert.tokenization_bert import load_vocab

    from fusionrec.data.synthetic_media import FILLER_WORDS, TITLE_WORDS

    words = sorted({w for levels in TITLE_WORDS.values() for pair in levels for w in pair} | set(FILLER_WORDS))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab=load_vocab(str(directory / "vocab.txt"))).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    BertModel(config).save_pretrained(directory)
    return directory


def config(args: argparse.Namespace, log: Path, text: str | None, epochs: int, batches: int | None) -> dict:
    features = {name: {"type": "categorical"} for name in ("user_id", "item_id", "category_id", "hour")}
    model = {"tasks": {"click": {"head": "binary"}}}
    if text is not None:
        features["item_title"] = {"type": "text"}
        model["encoders"] = {"item_title": {"model": str(args.text_model), "max_length": args.max_length,
                                            "mode": text}}
    trainer = {"max_epochs": epochs, "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False,
               "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
               "callbacks": []}
    if batches is not None:
        trainer["limit_train_batches"] = batches
    return {"seed_everything": args.seed, "trainer": trainer,
            "data": {"train": str(log), "features": features, "batch_size": args.batch_size}, "model": model}


def fit(args: argparse.Namespace, log: Path, name: str, text: str | None = None, epochs: int | None = None,
        batches: int | None = None) -> dict:
    """One ``fusionrec fit``: per-epoch seconds and rows, step ends, cache fill seconds and items computed."""
    import lightning.pytorch as pl
    import yaml

    import fusionrec.training.module as module
    from fusionrec.cli import make_cli

    class Clock(pl.Callback):
        def __init__(self):
            self.seconds, self.rows, self.ends = [], [], []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()
            self.seconds.append(0.0)
            self.rows.append(0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())
            self.seconds[-1] = self.ends[-1] - self.start
            self.rows[-1] += len(batch)

    fills, real = [], module.FeatureCache.features

    def timed(cache, *a, **k):  # the cache fill: hashing, reading from disk, computing missing items
        began = time.perf_counter()
        result = real(cache, *a, **k)
        fills.append((time.perf_counter() - began, cache.computed))
        return result

    run = args.workdir / "runs" / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config(args, log, text, epochs or args.epochs, batches)))
    sys.argv = sys.argv[:1]  # our own flags are not LightningCLI's
    began = time.perf_counter()
    cli = make_cli(["--config", str(run / "config.yaml"), "--trainer.default_root_dir", str(run)], run=False)
    clock = Clock()
    cli.trainer.callbacks.append(clock)
    module.FeatureCache.features = timed
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        module.FeatureCache.features = real
    total = time.perf_counter() - began
    return {"seconds": clock.seconds, "rows": clock.rows, "ends": clock.ends, "total": total,
            "fill": sum(s for s, _ in fills), "computed": fills[-1][1] if fills else 0,
            "batches_per_epoch": cli.trainer.num_training_batches}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the click log (all train)")
    parser.add_argument("--items", type=int, default=3_000, help="items (one title each; users = 6 x items)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of (a) and (b); epoch 2 is compared")
    parser.add_argument("--repeats", type=int, default=2, help="fits of (a) and of (b), alternating")
    parser.add_argument("--finetune-batches", type=int, default=6,
                        help="batches of (c); the first is warm-up, the rest are extrapolated to an epoch")
    parser.add_argument("--max-length", type=int, default=32, help="the text encoder's max_length")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fusionrec-content-bench"),
                        help="log, media, text model, feature cache and run directories")
    parser.add_argument("--text-model", type=Path, default=None,
                        help="a local Hugging Face model directory (default: a random MiniLM-L6-shaped BERT)")
    parser.add_argument("--fresh-process", action="store_true", help=argparse.SUPPRESS)  # the disk-read check
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    passed = list(sys.argv[1:] if argv is None else argv)  # for the fresh process; fit() empties sys.argv
    args = parse_args(passed)
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ["FUSIONREC_CACHE_DIR"] = str(args.workdir / "cache")
    import torch

    torch.set_num_threads(args.threads)
    for pattern in (".*does not have many workers.*", ".*LeafSpec.*", ".*number of training batches.*",
                    ".*val_dataloader.*", ".*limit_val_batches.*", ".*in eval mode.*"):
        warnings.filterwarnings("ignore", pattern)
    log = write_log(args)
    args.text_model = (args.text_model or minilm_shaped_bert(args.workdir / "minilm-l6-shaped-random")).resolve()
    if args.fresh_process:
        print(json.dumps({k: v for k, v in fit(args, log, "b-fresh", "frozen").items() if k != "ends"}))
        return 0

    shutil.rmtree(args.workdir / "cache", ignore_errors=True)  # (b)'s first fit fills the cache
    load = os.getloadavg()
    results: dict[str, list[dict]] = {"a": [], "b": []}
    for repeat in range(args.repeats):
        results["a"].append(fit(args, log, f"a{repeat}"))
        results["b"].append(fit(args, log, f"b{repeat}", "frozen"))
    c = fit(args, log, "c", "finetune", epochs=1, batches=args.finetune_batches)
    child = subprocess.run([sys.executable, __file__, "--fresh-process", *passed],
                           capture_output=True, text=True, check=True)
    fresh = json.loads(child.stdout.strip().splitlines()[-1])

    epoch2 = {k: statistics.median(r["seconds"][-1] for r in runs) for k, runs in results.items()}
    rows = results["a"][0]["rows"][-1]
    steps = [b - a for a, b in zip(c["ends"], c["ends"][1:])]  # the first batch (warm-up) is left out
    batches = results["a"][0]["batches_per_epoch"]  # (c) ran only --finetune-batches of them
    c_epoch = statistics.mean(steps) * batches
    table = [
        ("(a) id-only", epoch2["a"], "measured"),
        ("(b) + frozen text, cached", epoch2["b"], "measured"),
        ("(c) + text, finetune (no cache)", c_epoch,
         f"extrapolated: mean of {len(steps)} steps x {batches} batches/epoch"),
    ]
    print(f"\n{'configuration':<34} {'epoch-2 s':>10} {'rows/s':>9} {'vs (a)':>7}  note")
    for name, seconds, note in table:
        print(f"{name:<34} {seconds:>10.2f} {rows / seconds:>9,.0f} {seconds / epoch2['a']:>6.2f}x  {note}")
    print(f"\nratio (b)/(a), epoch 2, medians of {args.repeats}: {epoch2['b'] / epoch2['a']:.3f}   per repeat: "
          + ", ".join(f"{b['seconds'][-1] / a['seconds'][-1]:.3f}" for a, b in zip(results["a"], results["b"])))
    print("epoch seconds (a): " + "; ".join(", ".join(f"{s:.2f}" for s in r["seconds"]) for r in results["a"]))
    print("epoch seconds (b): " + "; ".join(", ".join(f"{s:.2f}" for s in r["seconds"]) for r in results["b"]))
    print("cache fill (FeatureCache.features in setup), s / items computed, per fit of (b): "
          + "; ".join(f"{r['fill']:.2f} / {r['computed']}" for r in results["b"])
          + f"; fresh process: {fresh['fill']:.2f} / {fresh['computed']}")
    print(f"fresh process (b): epoch seconds {', '.join(f'{s:.2f}' for s in fresh['seconds'])}")
    print(f"(c) measured: {len(steps)} steps, median {1e3 * statistics.median(steps):,.0f} ms, "
          f"mean {1e3 * statistics.mean(steps):,.0f} ms per batch of {args.batch_size}; "
          f"fill {c['fill']:.2f} s (none: no cache)")
    print(f"fit wall time incl. setup, s: (a) {results['a'][0]['total']:.1f}, (b) first {results['b'][0]['total']:.1f}"
          f", (b) later {results['b'][-1]['total']:.1f}")
    print(f"rows {args.rows:,}, items {args.items:,}, batch {args.batch_size}, batches/epoch "
          f"{results['a'][0]['batches_per_epoch']}, text model {args.text_model}, max_length {args.max_length}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cores {os.cpu_count()}, "
          f"load average (1/5/15 min) at start {' / '.join(f'{v:.2f}' for v in load)}, "
          f"at end {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
