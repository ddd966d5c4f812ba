"""Peak memory of the data module, in memory against streamed (data.streaming), on a log larger than
the machine should hold at once.

1. Generates 2,000,000 rows with the quickstart generator (50,000 users, 20,000 items, no media)
   once into ``$FUSIONREC_BENCH_CACHE`` (default ``<tmp>/fusionrec-bench``): the first 1.6M rows by
   time as 32 training shards (row groups of 10,000) and as one file, then validation and test files.
2. For each mode, in a fresh child process: builds ``MultiTaskDataModule`` (quickstart features, no
   media), runs ``setup("fit")`` (in memory: read and encode every split; streamed: the one-pass fit
   over the shards) and one epoch of training batches; prints setup and epoch seconds and the child's
   peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``).

    .venv/bin/python benchmarks/streaming_memory.py            # ~3 minutes on 2 idle cores
    .venv/bin/python benchmarks/streaming_memory.py --rows 200000   # smoke run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

QUICKSTART = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
MEDIA = ("item_title", "item_image", "item_audio")


def write_log(directory: Path, rows: int) -> None:
    import numpy as np

    from fusionrec.data.synthetic import generate_impressions

    if (directory / "done").exists():
        return
    (directory / "train").mkdir(parents=True, exist_ok=True)
    log = generate_impressions(rows=rows, users=50_000, items=20_000, seed=0)  # in time order
    train_end, val_end = int(rows * 0.8), int(rows * 0.9)
    train = log.iloc[:train_end]
    for number, part in enumerate(np.array_split(np.arange(len(train)), 32)):
        train.iloc[part].to_parquet(directory / "train" / f"part-{number:02d}.parquet", index=False,
                                    row_group_size=10_000)
    train.to_parquet(directory / "train.parquet", index=False, row_group_size=10_000)
    log.iloc[train_end:val_end].to_parquet(directory / "val.parquet", index=False, row_group_size=10_000)
    log.iloc[val_end:].to_parquet(directory / "test.parquet", index=False, row_group_size=10_000)
    (directory / "done").touch()


def measure(mode: str, directory: Path) -> None:
    """In the child: one mode's setup and epoch; prints one line."""
    import resource
    import time

    import torch

    from fusionrec.data.datamodule import MultiTaskDataModule

    torch.set_num_threads(1)
    config = yaml.safe_load(QUICKSTART.read_text())
    data = {key: value for key, value in config["data"].items() if key not in ("generate", "split")}
    data["features"] = {name: spec for name, spec in data["features"].items() if name not in MEDIA}
    splits = {"val": str(directory / "val.parquet"), "test": str(directory / "test.parquet")}
    if mode == "memory":
        data.update(train=str(directory / "train.parquet"), **splits)
    else:
        data["streaming"] = {"train": str(directory / "train" / "*.parquet"), **splits}
    module = MultiTaskDataModule(tasks=config["model"]["tasks"], **data)
    start = time.perf_counter()
    module.setup("fit")
    ready = time.perf_counter()
    rows = sum(len(batch) for batch in module.train_dataloader())
    done = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"| {mode} | {peak:.2f} | {ready - start:.1f} | {done - ready:.1f} | {rows:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--measure", choices=("memory", "streaming"), help=argparse.SUPPRESS)  # the child
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, Path(args.directory))
        return
    cache = Path(os.environ.get("FUSIONREC_BENCH_CACHE", Path(tempfile.gettempdir()) / "fusionrec-bench"))
    directory = cache / f"streaming-{args.rows}"
    # Generated in a child too, so that neither measured process holds the whole frame.
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"from streaming_memory import write_log; from pathlib import Path; "
                    f"write_log(Path({str(directory)!r}), {args.rows})"], check=True)
    print(f"{args.rows:,} generated rows ({int(args.rows * 0.8):,} training rows), one thread")
    print("| mode | peak RSS (GiB) | setup (s) | one training epoch (s) | training rows |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode in ("memory", "streaming"):
        subprocess.run([sys.executable, __file__, "--measure", mode, "--directory", str(directory)], check=True)


if __name__ == "__main__":
    main()
