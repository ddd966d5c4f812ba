"""Time and memory of building histories from the log (fusionrec.data.history) on a generated log.

Generates ``--rows`` events (default 10,000,000; 200,000 users, 50,000 items, integer timestamps
with ties, ratings 1-5) split 80/10/10 by time, fits the ``item_id`` vocabulary on the training
split, and builds a ``sequence`` history (``max_length`` 50, shares ``item_id``'s vocabulary,
positive: rating >= 4, or every event with ``--all-events``) for every row of every split. Prints:

- build seconds;
- the bytes per row the built columns keep (their tensors, the shared event array counted once),
  against the formula in fusionrec.data.history's docstring;
- the peak extra memory while building, per row (the process's peak RSS is reset just before the
  build through ``/proc/self/clear_refs``, then read from ``VmHWM``; Linux only);
- the time to gather one batch of 1024 rows ``Int64[1024, 50, 1]``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/history_memory.py            # ~1 minute on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/history_memory.py --rows 200000   # smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusionrec.data.history import build_histories
from fusionrec_features.sequence import SequenceFeature
from fusionrec_features.tabular import Categorical

KEY = "data.features.watched"


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def generate(rows: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    log = pd.DataFrame({"user_id": rng.integers(0, 200_000, rows),
                        "timestamp": np.sort(rng.integers(0, rows // 4, rows)),
                        "item_id": rng.zipf(1.3, rows) % 50_000, "rating": rng.integers(1, 6, rows, dtype=np.int8)})
    bounds = [int(rows * 0.8), int(rows * 0.9)]
    splits = dict(zip(("train", "val", "test"), (log.iloc[:bounds[0]], log.iloc[bounds[0]:bounds[1]],
                                                 log.iloc[bounds[1]:])))
    for name, split in splits.items():
        split.attrs["source"] = f"generated ({name} split)"
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--max-length", type=int, default=50)
    parser.add_argument("--all-events", action="store_true", help="no positive filter: every event counts")
    args = parser.parse_args()
    torch.set_num_threads(1)

    splits = generate(args.rows)
    items = Categorical("item_id", Categorical.check_options({}, "data.features.item_id"))
    items = Categorical("item_id", items.fitted(items.fit(splits["train"]["item_id"].to_numpy())))
    history = {"user": "user_id", "time": "timestamp", "item": "item_id"}
    if not args.all_events:
        history["positive"] = {"column": "rating", "min": 4}
    options = SequenceFeature.check_options({"max_length": args.max_length, "vocabulary": "item_id",
                                             "history": history}, KEY)
    kind = SequenceFeature("watched", SequenceFeature("watched", options).fitted(None))
    kind.link({"item_id": items, "watched": kind})

    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS, to the current RSS
    before = status_bytes("VmRSS")
    start = time.perf_counter()
    columns = build_histories(splits, kind, KEY)
    seconds = time.perf_counter() - start
    peak = status_bytes("VmHWM")

    tensors = {id(t): t for column in columns.values() for t in (column.events, column.ends, column.counts)}
    kept = sum(t.element_size() * t.nelement() for t in tensors.values())
    events = len(columns["train"].events) - 1
    share = events / args.rows
    ends, counts = columns["train"].ends, columns["train"].counts
    formula = ends.element_size() + counts.element_size() + columns["train"].events.element_size() * share
    index = torch.randperm(len(columns["train"]))[:1024]
    gather_start = time.perf_counter()
    for _ in range(20):
        batch = columns["train"].batch(index)
    gather_ms = (time.perf_counter() - gather_start) / 20 * 1000
    filled = float((batch[..., 0] != 0).sum(dim=1).float().mean())
    print(f"rows {args.rows:,}; events in histories {events:,} ({share:.0%}); max_length {args.max_length}")
    print(f"build: {seconds:.1f} s; kept {kept / args.rows:.2f} bytes/row (formula {formula:.2f}); "
          f"peak extra while building {(peak - before) / args.rows:.1f} bytes/row "
          f"({(peak - before) / 2**20:.0f} MiB)")
    print(f"gather of 1024 rows: {gather_ms:.2f} ms ({tuple(batch.shape)}, {filled:.1f} of {args.max_length} "
          f"positions filled on average)")


if __name__ == "__main__":
    main()
