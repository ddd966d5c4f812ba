"""Wall time and peak memory of top-100 by inner product over generated item vectors, exact
(fusionrec.recommend.vectors.exact_topk) and approximate (ApproximateIndex, faiss IVF-Flat), and
the approximate search's recall@100 against the exact one.

Vectors (D = 64, seed 0): ``items / 100`` cluster centres drawn from N(0, 1); each item and each user
is a random centre plus N(0, ``--noise``^2) noise (default 0.5), so the catalogue has the cluster
structure that learned embeddings have and approximate search is neither trivial nor hopeless.

Each case runs in a fresh subprocess that generates the vectors, then resets its peak RSS
(``/proc/self/clear_refs``, Linux only) and reports the peak RSS increase over that baseline
(torch's and faiss's allocations included, which tracemalloc does not see).

    .venv/bin/python benchmarks/retrieval_scale.py --threads 1              # ~3 minutes on one core
    .venv/bin/python benchmarks/retrieval_scale.py --items 20000 --users 1000   # smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusionrec.recommend.vectors import ApproximateIndex, exact_topk, recall_against

K, DIM = 100, 64


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def generate(num_users: int, num_items: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, num_items // 100), DIM), dtype=np.float32)
    items = centres[rng.integers(0, len(centres), num_items)]
    items += noise * rng.standard_normal(items.shape, dtype=np.float32)
    users = centres[rng.integers(0, len(centres), num_users)]
    users += noise * rng.standard_normal(users.shape, dtype=np.float32)
    return users, items


def run_case(args: argparse.Namespace) -> None:
    """One case in this (fresh) process: prints ``{build, search, peak}`` as JSON, saves the rows."""
    torch.set_num_threads(args.threads)
    if args.case == "approximate":
        import faiss

        faiss.omp_set_num_threads(args.threads)
    users, items = (torch.from_numpy(array) for array in generate(args.users, args.items[0], args.noise))
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS, to the current RSS
    baseline = status_bytes("VmRSS")
    start = time.perf_counter()
    build = 0.0
    if args.case == "exact":
        _, rows = exact_topk(users, items, K)
    else:
        index = ApproximateIndex(items, nprobe=args.nprobe)
        build = time.perf_counter() - start
        start = time.perf_counter()
        _, rows = index.search(users, K)
    search = time.perf_counter() - start
    np.save(args.rows_out, rows)
    print(json.dumps({"build": build, "search": search, "peak": status_bytes("VmHWM") - baseline}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.5, help="per-vector noise around its cluster centre")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF lists searched per user")
    parser.add_argument("--case", choices=["exact", "approximate"], help=argparse.SUPPRESS)
    parser.add_argument("--rows-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return run_case(args)

    print(f"top-{K}, {args.users:,} users, D = {DIM}, noise {args.noise}, {args.threads} thread(s), "
          f"IVF-Flat nprobe {args.nprobe}\n")
    print("| items | search | build s | search s | peak extra RSS MiB | recall@100 |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for num_items in args.items:
            rows = {}
            for case in ("exact", "approximate"):
                rows_out = f"{folder}/{case}.npy"
                output = subprocess.run(
                    [sys.executable, __file__, "--case", case, "--rows-out", rows_out, "--items", str(num_items),
                     "--users", str(args.users), "--threads", str(args.threads), "--noise", str(args.noise),
                     "--nprobe", str(args.nprobe)], check=True, capture_output=True, text=True).stdout
                result = json.loads(output.strip().splitlines()[-1])
                rows[case] = np.load(rows_out)
                if case == "exact":
                    build, recall = "-", "1 (reference)"
                else:
                    build, recall = f"{result['build']:.2f}", f"{recall_against(rows['exact'], rows[case]):.4f}"
                print(f"| {num_items:,} | {case} | {build} | {result['search']:.2f} | "
                      f"{result['peak'] / 2**20:.0f} | {recall} |", flush=True)


if __name__ == "__main__":
    main()
