"""Building FREEDOM's content kNN graph (fusionrec_graph.lightgcn.knn_graph) over generated item
vectors: wall time and peak memory by catalogue size and vector width.

Each case (items, dim) runs in a fresh subprocess: random unit vectors (seed 0), then one
``knn_graph`` call with ``--neighbours`` (10); the peak RSS increase over the RSS after generating
the vectors is reported (``/proc/self/clear_refs``, Linux only).

    .venv/bin/python benchmarks/graph/knn_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from fusionrec_graph.lightgcn import knn_graph


def resident(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_case(items: int, dim: int, neighbours: int, threads: int) -> None:
    torch.set_num_threads(threads)
    vectors = torch.randn(items, dim, generator=torch.Generator().manual_seed(0))
    present = torch.ones(items, dtype=torch.bool)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    baseline = resident("VmRSS")
    start = time.perf_counter()
    edges = knn_graph(vectors, present, neighbours)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak": resident("VmHWM") - baseline, "edges": edges.shape[1]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 384])
    parser.add_argument("--neighbours", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return run_case(*args.case, args.neighbours, args.threads)
    print(f"knn_graph, {args.neighbours} neighbours, {args.threads} thread(s), torch {torch.__version__}\n")
    print("| items | dim | edges | seconds | peak extra RSS MiB |\n|---|---|---|---|---|")
    for items in args.items:
        for dim in args.dims:
            done = subprocess.run([sys.executable, __file__, "--case", str(items), str(dim), "--neighbours",
                                   str(args.neighbours), "--threads", str(args.threads)], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"| {items:,} | {dim} | failed: {(done.stderr.strip().splitlines() or [''])[-1]} | | |")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {items:,} | {dim} | {result['edges']:,} | {result['seconds']:.2f} | "
                  f"{result['peak'] / 2 ** 20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
