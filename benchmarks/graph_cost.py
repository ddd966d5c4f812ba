"""Wall time and peak memory of LightGCN propagation (fusionrec_graph.lightgcn) on generated
user-item graphs of 1M, 3M and 10M interactions.

Graph (seed 0): ``edges / 20`` users, ``edges / 100`` items (``--users-per-edge``,
``--items-per-edge``); each edge's user is uniform, its item a Zipf draw (probability of the item of
popularity rank r proportional to ``r^-alpha``, ``--alpha`` 0.8); duplicate pairs are drawn again, so
the graph has exactly that many distinct edges. Two ``lightgcn`` encoders (D = 64) are linked as a
model links them and handed the edges; per case (edges, layers) it times:

- ``set_edges``: the encoder's dedup of the training pairs (``torch.unique``), once per fit;
- ``adjacency``: building the normalised sparse adjacency, once per fit;
- ``train prop``: one training-mode propagation, forward and backward (median of ``--repeats``
  after one warm-up);
- ``step``: the two encoders' part of a training step, each encoder's forward on a batch of 1,024 ids
  and one backward: each forward propagates the whole graph, so it is about twice ``train prop``;
- ``eval prop``: one eval-mode propagation (no autograd), done once and kept until training resumes.

Each case runs in a fresh subprocess that generates the edges, then resets its peak RSS
(``/proc/self/clear_refs``, Linux only) and reports the peak RSS increase over that baseline after
each phase: set_edges, + adjacency, + the propagations (the last is the case's peak). The phases'
freed memory stays with the allocator, so a later phase shows only what it needs beyond the
earlier peaks.

    .venv/bin/python benchmarks/graph_cost.py --threads 1            # ~11 minutes on one core
    .venv/bin/python benchmarks/graph_cost.py --edges 100000 --layers 2  # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fusionrec.components import FieldInfo
from fusionrec.features.base import RESERVED
from fusionrec_graph.lightgcn import LightGCNEncoder

DIM = 64
BATCH = 1024
GRAPH = {"user": "user_id", "item": "item_id"}


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def generate(num_edges: int, num_users: int, num_items: int, alpha: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``num_edges`` distinct (user, item) pairs, ids from ``RESERVED`` on (0 and 1 are padding and
    out of vocabulary, no edges)."""
    rng = np.random.default_rng(seed)
    popularity = np.arange(1, num_items + 1, dtype=np.float64) ** -alpha
    popularity /= popularity.sum()
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < num_edges:
        missing = num_edges - len(keys)
        draw = int(missing * 1.2) + 1000  # a few more than missing: some collide with pairs drawn already
        users = rng.integers(0, num_users, draw)
        items = rng.choice(num_items, draw, p=popularity)
        fresh = np.unique(users * num_items + items)
        keys = np.union1d(keys, fresh)  # sorted, distinct
    keys = rng.permutation(keys)[:num_edges]
    return keys // num_items + RESERVED, keys % num_items + RESERVED


def sparse_bytes(matrix: torch.Tensor) -> int:
    """A sparse CSR matrix's size: its row offsets, column indices and values."""
    return sum(t.numel() * t.element_size() for t in (matrix.crow_indices(), matrix.col_indices(), matrix.values()))


def run_case(args: argparse.Namespace) -> None:
    """One case in this (fresh) process: prints its timings, sizes and peak as JSON."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    num_edges, layers = args.edges[0], args.layers[0]
    num_users, num_items = num_edges // args.users_per_edge, num_edges // args.items_per_edge
    users, items = (torch.from_numpy(array) for array in
                    generate(num_edges, num_users, num_items, args.alpha))
    user = LightGCNEncoder(FieldInfo("user_id", "categorical", cardinality=num_users + RESERVED), DIM, GRAPH, layers)
    item = LightGCNEncoder(FieldInfo("item_id", "categorical", cardinality=num_items + RESERVED), DIM, GRAPH, layers)
    user.link(item)
    propagation = user.propagation
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS, to the current RSS
    baseline = status_bytes("VmRSS")
    result = {}

    start = time.perf_counter()
    user.use_interactions(users, items)
    result["set_edges"] = time.perf_counter() - start
    result["after_set_edges"] = status_bytes("VmHWM") - baseline
    del users, items  # a model keeps only the buffer
    start = time.perf_counter()
    adjacency = propagation.normalised_adjacency()
    result["adjacency"] = time.perf_counter() - start
    result["after_build"] = status_bytes("VmHWM") - baseline
    result["edges_bytes"] = propagation.edges.numel() * propagation.edges.element_size()
    result["adjacency_bytes"] = sparse_bytes(adjacency)

    def train_propagation() -> float:
        start = time.perf_counter()
        tables = propagation()
        (tables[0].square().sum() + tables[1].square().sum()).backward()  # reaches every row, as a full batch
        elapsed = time.perf_counter() - start
        user.embedding.weight.grad = item.embedding.weight.grad = None
        return elapsed

    batch = torch.randint(RESERVED, num_users + RESERVED, (BATCH,)), torch.randint(RESERVED, num_items + RESERVED, (BATCH,))

    def train_step() -> float:
        start = time.perf_counter()
        (user(batch[0]) * item(batch[1])).sum().backward()  # each encoder's forward propagates
        elapsed = time.perf_counter() - start
        user.embedding.weight.grad = item.embedding.weight.grad = None
        return elapsed

    train_propagation()  # warm-up
    result["train"] = statistics.median(train_propagation() for _ in range(args.repeats))
    result["step"] = statistics.median(train_step() for _ in range(args.repeats))
    propagation.eval()
    times = []
    for _ in range(args.repeats):
        propagation.train(), propagation.eval()  # drops the kept tables
        start = time.perf_counter()
        with torch.no_grad():
            propagation()
        times.append(time.perf_counter() - start)
    result["eval"] = statistics.median(times)
    result["distinct_edges"] = propagation.edges.shape[1]
    result["peak"] = status_bytes("VmHWM") - baseline
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--users-per-edge", type=int, default=20, help="users = edges / this")
    parser.add_argument("--items-per-edge", type=int, default=100, help="items = edges / this")
    parser.add_argument("--alpha", type=float, default=0.8, help="Zipf exponent of item popularity")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measure (the median is shown)")
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return run_case(args)

    print(f"LightGCN propagation, D = {DIM}, users = edges / {args.users_per_edge}, items = edges / "
          f"{args.items_per_edge}, Zipf alpha {args.alpha}, {args.threads} thread(s), torch {torch.__version__}\n")
    print("| edges | users | items | layers | edges MiB | adjacency MiB | set_edges s | adjacency s "
          "| train prop fwd+bwd s | step s | eval prop s | peak extra RSS MiB: set_edges / + adjacency / "
          "+ propagation |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for num_edges in args.edges:
        for layers in args.layers:
            command = [sys.executable, __file__, "--case", "--edges", str(num_edges), "--layers", str(layers),
                       "--users-per-edge", str(args.users_per_edge), "--items-per-edge", str(args.items_per_edge),
                       "--alpha", str(args.alpha), "--threads", str(args.threads), "--repeats", str(args.repeats)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"| {num_edges:,} | | | {layers} | failed (exit {done.returncode}): "
                      f"{(done.stderr.strip().splitlines() or [''])[-1]} |", flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            mib = 2 ** 20
            print(f"| {r['distinct_edges']:,} | {num_edges // args.users_per_edge:,} | "
                  f"{num_edges // args.items_per_edge:,} | {layers} | {r['edges_bytes'] / mib:.0f} | "
                  f"{r['adjacency_bytes'] / mib:.0f} | {r['set_edges']:.2f} | {r['adjacency']:.2f} | "
                  f"{r['train']:.2f} | {r['step']:.2f} | {r['eval']:.2f} | "
                  f"{r['after_set_edges'] / mib:.0f} / {r['after_build'] / mib:.0f} / {r['peak'] / mib:.0f} |", flush=True)


if __name__ == "__main__":
    main()
