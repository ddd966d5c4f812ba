"""Training throughput of fusionrec against a bare PyTorch loop on the same network.

What it does:

1. Generates (numpy, seeded, deterministic) a click/conversion impression log -- 7 id columns
   (user_id ~50k, item_id ~20k, five smaller), 12 numeric columns, labels ``click`` and
   ``conversion`` (a conversion only after a click), both driven by hidden user/item factors and by
   the numeric features -- and writes it once to Parquet in a cache directory outside the repo
   (``$FUSIONREC_BENCH_CACHE``, default ``<tmp>/fusionrec-bench``). Generation runs in a child
   process so that it does not count towards this process's peak RSS.
2. Trains an MMoE model through the framework: ``MultiTaskDataModule`` (95% train / 5% val random
   split) + ``MultiTaskModule`` + ``lightning.Trainer`` on CPU (no validation while timing). A
   callback stamps ``on_train_batch_end``; a step lasts from the end of the previous step to its
   own end, so it includes everything Lightning does between steps (fetching and gathering the
   batch, moving it to the device, ``self.log``, hooks, the optimizer closure) but not setup or
   preprocessing. The first ``--warmup`` steps of every fit are not timed.
3. Runs the same ``module.model`` / ``module.balancer`` / heads' losses in a bare loop -- forward,
   balanced loss, ``zero_grad``, backward, ``Adam.step`` (a fresh Adam, as each fit makes) -- over
   batches pre-gathered from the same training tensors and held in a Python list (no Lightning,
   no DataLoader), same batch size, same steps, same warm-up, timed the same way.
4. Alternates the two loops in ``--blocks`` blocks (framework, bare, framework, bare, ...), so that
   both see the same background load, and prints a table: rows/s both ways (all timed rows over
   all timed wall time), their ratio, the ratio of median step times, the median of the per-block
   ratios, the framework loader alone, peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of
   this process; tracemalloc is not used, it does not see tensor memory), rows, steps, batch size,
   the validation AUCs after training (the signal is learnable), torch version, threads and cores.

Both loops run in one process with torch's default thread count unless ``--threads`` is given.

    .venv/bin/python benchmarks/throughput.py                        # 500k rows, 8 x (25 + 5) steps
    .venv/bin/python benchmarks/throughput.py --rows 50000 --steps 20 --blocks 2 --warmup 2  # smoke
    .venv/bin/python benchmarks/throughput.py --history 50   # plus each user's 50 latest earlier clicks
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from fusionrec.data.synthetic import cache_path, write_once

GENERATOR_VERSION = 2
ID_COLUMNS = ("user_id", "item_id", "category_id", "brand_id", "city_id", "scenario", "device")
NUMERIC_COLUMNS = ("user_age", "user_tenure_days", "user_ctr_7d", "item_price", "item_discount", "item_rating",
                   "item_ctr_7d", "item_age_days", "position", "hour", "distance_km", "session_depth")
LABELS = ("click", "conversion")


# --------------------------------------------------------------------------- data


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_log(rows: int, users: int, items: int, seed: int):
    """The impression log as a DataFrame. Every feature carries part of the signal."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    latent = 8
    user_vec = rng.normal(0, 1, (users, latent)).astype(np.float32)
    item_vec = rng.normal(0, 1, (items, latent)).astype(np.float32)
    # Item side: category from the latent factors, brand nested in category-ish, price by brand.
    category = np.argmax(item_vec @ rng.normal(0, 1, (latent, 200)), axis=1)
    brand = (category * 5 + rng.integers(0, 5, items)) % 1000
    brand_price = np.exp(rng.normal(3.0, 0.7, 1000))
    item_price = brand_price[brand] * np.exp(rng.normal(0, 0.2, items))
    item_rating = np.clip(3.8 + 0.4 * item_vec[:, 0] + rng.normal(0, 0.3, items), 1, 5)
    item_age = rng.exponential(120, items)
    # User side: city (300), age, tenure.
    city = rng.integers(0, 300, users)
    city_bias = rng.normal(0, 0.3, 300)
    user_age = np.clip(rng.normal(36, 11, users), 16, 80)
    tenure = rng.exponential(400, users)
    user_activity = rng.normal(0, 0.5, users)

    user_pop = 1.0 / np.arange(1, users + 1) ** 0.5
    item_pop = 1.0 / np.arange(1, items + 1) ** 0.8
    user = rng.choice(users, rows, p=user_pop / user_pop.sum())
    item = rng.choice(items, rows, p=item_pop / item_pop.sum())
    scenario = rng.integers(0, 4, rows)
    device = rng.choice(3, rows, p=[0.6, 0.3, 0.1])
    position = rng.integers(1, 31, rows).astype(np.float64)
    hour = rng.integers(0, 24, rows).astype(np.float64)
    distance = rng.exponential(8, rows)
    session_depth = rng.poisson(4, rows).astype(np.float64)
    discount = np.clip(rng.beta(1.5, 6, rows), 0, 0.9)
    timestamp = np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 30 * 86_400, rows))

    affinity = np.einsum("ij,ij->i", user_vec[user], item_vec[item]) / np.sqrt(latent)
    click_logit = (-1.6 + 1.6 * affinity + np.array([0.3, -0.4, 0.1, -0.1])[scenario]
                   + np.array([0.0, 0.15, -0.2])[device] - 0.03 * position
                   + 0.25 * np.cos(hour / 24 * 2 * np.pi) + user_activity[user] + city_bias[city[user]]
                   - 0.02 * distance + 0.3 * (item_rating[item] - 3.8))
    click = rng.random(rows) < _sigmoid(click_logit)
    taste = np.einsum("ij,ij->i", user_vec[user, :3], item_vec[item, :3]) / np.sqrt(3)
    conversion_logit = (-2.4 + 1.5 * taste - 0.6 * (np.log(item_price[item]) - 3.0) + 3.0 * discount
                        + 0.02 * (user_age[user] - 36) + 0.1 * np.log1p(tenure[user] / 100))
    conversion = click & (rng.random(rows) < _sigmoid(conversion_logit))

    # Historical CTRs: a noisy view of the same propensities (what a feature store would hold).
    user_ctr = np.clip(_sigmoid(-1.6 + user_activity[user] + rng.normal(0, 0.3, rows)), 0, 1)
    item_ctr = np.clip(_sigmoid(-1.6 + 0.3 * (item_rating[item] - 3.8) + rng.normal(0, 0.3, rows)), 0, 1)
    age = user_age[user].round(0)
    age[rng.random(rows) < 0.05] = np.nan  # some users never gave their age

    return pd.DataFrame({
        "user_id": user, "item_id": item, "category_id": category[item], "brand_id": brand[item],
        "city_id": city[user], "scenario": scenario, "device": device,
        "user_age": age, "user_tenure_days": tenure[user].round(1), "user_ctr_7d": user_ctr.round(4),
        "item_price": item_price[item].round(2), "item_discount": discount.round(3),
        "item_rating": item_rating[item].round(2), "item_ctr_7d": item_ctr.round(4),
        "item_age_days": item_age[item].round(1), "position": position, "hour": hour,
        "distance_km": distance.round(2), "session_depth": session_depth, "timestamp": timestamp,
        "click": click.astype(np.int8), "conversion": conversion.astype(np.int8),
    })


def cache_dir() -> Path:
    return Path(os.environ.get("FUSIONREC_BENCH_CACHE", Path(tempfile.gettempdir()) / "fusionrec-bench"))


def log_path(rows: int, users: int, items: int, seed: int) -> Path:
    params = {"rows": rows, "users": users, "items": items, "seed": seed, "version": GENERATOR_VERSION}
    return cache_path(f"impressions-{rows}", params, cache_dir())


def write_log(rows: int, users: int, items: int, seed: int) -> Path:
    return write_once(log_path(rows, users, items, seed), lambda: generate_log(rows, users, items, seed))


def ensure_log(args: argparse.Namespace) -> Path:
    """Generate in a child process, so the generator's arrays don't set this process's peak RSS."""
    path = log_path(args.rows, args.users, args.items, args.seed)
    if not path.exists():
        subprocess.run([sys.executable, __file__, "--generate-only", "--rows", str(args.rows),
                        "--users", str(args.users), "--items", str(args.items), "--seed", str(args.seed)],
                       check=True)
    return path


# --------------------------------------------------------------------------- measuring


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def timed_steps(ends: list[float], sizes: list[int], warmup: int) -> tuple[list[float], list[int]]:
    """Durations and rows of the steps after ``warmup``; a step's duration runs from the end of the
    previous step to its own end, so it includes fetching its batch."""
    if not 1 <= warmup < len(ends):
        raise SystemExit(f"need 1 <= --warmup ({warmup}) < steps run ({len(ends)})")
    return [b - a for a, b in zip(ends[warmup - 1:], ends[warmup:])], sizes[warmup:]


def make_config(args: argparse.Namespace, path: Path) -> tuple[dict, dict]:
    features = {column: {"type": "categorical"} for column in ID_COLUMNS}
    features.update({column: {"type": "numeric"} for column in NUMERIC_COLUMNS})
    if args.history:
        # the user's earlier clicks, built from the log itself
        features["history"] = {"type": "sequence", "max_length": args.history, "vocabulary": "item_id",
                               "history": {"user": "user_id", "time": "timestamp", "item": "item_id",
                                           "positive": {"column": "click"}}}
    tasks = {"click": {"head": "binary", "weight": 1.0}, "conversion": {"head": "binary", "weight": 1.0}}
    data = {"features": features, "tasks": tasks, "path": str(path), "batch_size": args.batch_size,
            "split": {"method": "random", "ratios": [0.95, 0.05, 0.0], "seed": args.seed}}
    model = {"tasks": tasks, "embedding_dim": args.embedding_dim,
             "trunk": {"name": "mmoe", "num_experts": args.experts, "expert_hidden": args.expert_hidden},
             "learning_rate": 2e-3}
    if args.history:
        model["encoders"] = {"history": {"name": args.history_encoder}}
    return data, model


def trainer(**options):
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **options)


class BareStep:
    """One step of a bare loop: forward, balanced loss, ``zero_grad``, backward, ``Adam.step`` (fused,
    as fusionrec's optimizer is)."""

    def __init__(self, model, balancer, parameters, learning_rate: float, weight_decay: float):
        import torch

        self.model, self.balancer, self.heads = model.train(), balancer, model.heads
        self.optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay, fused=True)

    def __call__(self, features: dict, labels: dict):
        outputs = self.model(features)
        total = self.balancer({task: head.loss(outputs[task], labels[task]) for task, head in self.heads.items()}, [])
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return total


def run_framework(module, datamodule, steps: int, warmup: int, interleave: list | None = None):
    """``steps`` optimizer steps of ``Trainer.fit`` (one epoch, no validation): durations and rows.

    With ``interleave`` (pre-made batches), a bare step on a copy of the network runs after every
    framework step, outside the framework's timing, and its durations and rows come back too."""
    import copy

    import lightning.pytorch as pl

    class StepClock(pl.Callback):
        def __init__(self):
            self.ends: list[float] = []
            self.sizes: list[int] = []
            self.bare_ends: list[float] = []
            self.bare_sizes: list[int] = []

        def on_train_start(self, trainer, pl_module):
            if interleave is not None:
                model, balancer = copy.deepcopy(pl_module.model), copy.deepcopy(pl_module.balancer)
                self.bare = BareStep(model, balancer, [*model.parameters(), *balancer.parameters()],
                                     pl_module.hparams.learning_rate, pl_module.hparams.weight_decay)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.sizes.append(len(batch))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())
            if interleave is not None:
                features, labels = interleave[batch_idx]
                self.bare(features, labels)
                self.bare_sizes.append(len(next(iter(labels.values()))))
                self.bare_ends.append(time.perf_counter())

    clock = StepClock()
    trainer(max_epochs=1, max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0,
            callbacks=[clock]).fit(module, datamodule=datamodule)
    if interleave is None:
        return timed_steps(clock.ends, clock.sizes, warmup)
    # A framework step runs from the end of the previous bare step; a bare step from the end of
    # the framework step before it.
    framework = [end - previous for previous, end in zip(clock.bare_ends[warmup - 1:], clock.ends[warmup:])]
    bare = [end - start for start, end in zip(clock.ends[warmup:], clock.bare_ends[warmup:])]
    return (framework, clock.sizes[warmup:]), (bare, clock.bare_sizes[warmup:])


def premade_batches(table, steps: int, batch_size: int, seed: int) -> list[tuple[dict, dict]]:
    """``steps`` batches gathered up front from a seeded permutation of the training tensors."""
    import torch

    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(seed))
    batches = (table[rows] for rows in order[:steps * batch_size].split(batch_size))
    return [(batch.features, batch.labels) for batch in batches]


def run_bare(module, batches: list[tuple[dict, dict]], warmup: int) -> tuple[list[float], list[int]]:
    """The framework's network, loss and optimizer (``module.parameters()``, its learning rate and
    weight decay) in a plain loop over ``batches``."""
    step = BareStep(module.model, module.balancer, module.parameters(), module.hparams.learning_rate,
                    module.hparams.weight_decay)
    ends, sizes = [], []
    for features, labels in batches:
        step(features, labels)
        sizes.append(len(next(iter(labels.values()))))
        ends.append(time.perf_counter())
    return timed_steps(ends, sizes, warmup)


def time_loader(datamodule, steps: int) -> float:
    """Median seconds per batch of the framework's training loader alone (no model)."""
    loader, ends = datamodule.train_dataloader(), []
    for batch in loader:
        ends.append(time.perf_counter())
        if len(ends) > steps:
            break
    return statistics.median(b - a for a, b in zip(ends, ends[1:]))


class Loop:
    def __init__(self):
        self.durations: list[float] = []
        self.sizes: list[int] = []
        self.blocks: list[float] = []

    def add(self, durations: list[float], sizes: list[int]) -> None:
        self.durations += durations
        self.sizes += sizes
        self.blocks.append(sum(sizes) / sum(durations))

    @property
    def rate(self) -> float:
        """Rows over wall time, all timed steps."""
        return sum(self.sizes) / sum(self.durations)

    @property
    def median_rate(self) -> float:
        """Rows of a median step over its duration: robust to other processes' bursts."""
        return statistics.median(self.sizes) / statistics.median(self.durations)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000, help="rows of the generated log")
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200, help="timed optimizer steps per loop, over all blocks")
    parser.add_argument("--blocks", type=int, default=8,
                        help="alternate framework and bare loop this many times, steps/blocks timed steps each")
    parser.add_argument("--interleave", choices=("block", "step"), default="block",
                        help="block: a whole bare loop after each fit; step: one bare step (on a copy of the "
                             "network) after every framework step, for machines shared with other work")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of every block")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--expert-hidden", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--history", type=int, default=0, metavar="LENGTH",
                        help="add a sequence feature: each row's user's earlier clicked items, LENGTH long")
    parser.add_argument("--history-encoder", default="sequence_mean", help="the history field's encoder")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both loops (default: torch's own default, one per core)")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate_only:
        return args
    if args.warmup < 1 or args.blocks < 1 or args.steps < args.blocks:
        parser.error("need --warmup >= 1 and --steps >= --blocks >= 1")
    args.block_steps = -(-args.steps // args.blocks) + args.warmup
    if args.block_steps * args.batch_size > 0.95 * args.rows:
        parser.error(f"a block ({args.block_steps} steps x {args.batch_size} rows) must fit in one epoch of the "
                     f"training split (95% of --rows {args.rows}); lower --steps or raise --blocks")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generate_only:
        print(f"wrote {write_log(args.rows, args.users, args.items, args.seed)}")
        return 0

    began = time.perf_counter()
    path = ensure_log(args)
    generated = time.perf_counter()

    import lightning.pytorch as pl
    import torch

    from fusionrec.data.datamodule import MultiTaskDataModule
    from fusionrec.training.module import MultiTaskModule

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*number of training batches.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    data_config, model_config = make_config(args, path)
    datamodule = MultiTaskDataModule(**data_config)
    datamodule.setup("fit")  # read + split + fit preprocessing + tensorise, outside every timing
    table = datamodule.tables["train"]
    prepared = time.perf_counter()
    rss_data = peak_rss_mib()
    module = MultiTaskModule(**model_config)

    framework, bare = Loop(), Loop()
    for block in range(args.blocks):
        batches = premade_batches(table, args.block_steps, args.batch_size, seed=args.seed + block)
        if args.interleave == "step":
            framework_steps, bare_steps = run_framework(module, datamodule, args.block_steps, args.warmup, batches)
            framework.add(*framework_steps)
            bare.add(*bare_steps)
        else:
            framework.add(*run_framework(module, datamodule, args.block_steps, args.warmup))
            bare.add(*run_bare(module, batches, args.warmup))
        del batches
        gc.collect()  # the trainer (and, interleaved, the network's copy) of this block
    rss_peak = peak_rss_mib()
    loader_seconds = time_loader(datamodule, 50)
    validated = trainer().validate(module, datamodule=datamodule, verbose=False)[0]

    parameters = sum(p.numel() for p in module.parameters())
    vocab = {name: len(entry["vocabulary"]) for name, entry in datamodule.preprocessor.state["features"].items()
             if entry["type"] == "categorical"}
    clicks = table.labels["click"].mean().item()
    conversions = table.labels["conversion"].mean().item()
    step_ms = 1e3 * statistics.median(framework.durations), 1e3 * statistics.median(bare.durations)
    if args.interleave == "step":
        overhead = statistics.median(f - b for f, b in zip(framework.durations, bare.durations))
        overhead_kind = "median of paired step differences"
    else:
        overhead = statistics.median(framework.durations) - statistics.median(bare.durations)
        overhead_kind = "difference of median steps"
    block_ratios = [f / b for f, b in zip(framework.blocks, bare.blocks)]
    table_rows = [
        ("framework rows/s (Lightning fit)", f"{framework.rate:,.0f}"),
        ("bare-loop rows/s (same network)", f"{bare.rate:,.0f}"),
        ("ratio framework / bare", f"{framework.rate / bare.rate:.3f}"),
        ("  per block, framework rows/s", ", ".join(f"{r:,.0f}" for r in framework.blocks)),
        ("  per block, bare rows/s", ", ".join(f"{r:,.0f}" for r in bare.blocks)),
        ("median step [ms] framework / bare", f"{step_ms[0]:.1f} / {step_ms[1]:.1f}"),
        ("ratio on median steps", f"{framework.median_rate / bare.median_rate:.3f}"),
        ("median of per-block ratios", f"{statistics.median(block_ratios):.3f}"),
        ("framework overhead per step [ms]", f"{1e3 * overhead:.2f} ({overhead_kind})"),
        ("framework loader alone [ms/batch]", f"{1e3 * loader_seconds:.2f}"),
        ("peak RSS after data setup [MiB]", f"{rss_data:,.0f}"),
        ("peak RSS after training [MiB]", f"{rss_peak:,.0f}"),
        ("rows (train split)", f"{args.rows:,} ({len(table):,}); click {clicks:.3f}, conversion {conversions:.4f}"),
        ("steps per loop (timed)", f"{args.blocks} x {args.block_steps} ({len(framework.durations)} timed, "
                                   f"{sum(framework.sizes):,} rows)"),
        ("batch size / interleave", f"{args.batch_size} / {args.interleave}"),
        ("model", f"MMoE {args.experts}x{args.expert_hidden}, emb {args.embedding_dim}, "
                  f"{len(ID_COLUMNS)} ids + {len(NUMERIC_COLUMNS)} numerics"
                  + (f" + a {args.history}-long history ({args.history_encoder})" if args.history else "")
                  + f", {parameters:,} params"),
        ("largest vocabularies", f"user_id {vocab['user_id']:,}, item_id {vocab['item_id']:,}"),
        ("val AUC after training: click / conversion",
         f"{validated['val/click/auc']:.3f} / {validated['val/conversion/auc']:.3f}"),
        ("torch / lightning", f"{torch.__version__} / {pl.__version__}"),
        ("torch threads / cores", f"{torch.get_num_threads()} / {os.cpu_count()}"),
        ("python / platform", f"{platform.python_version()} / {platform.machine()}"),
        ("time: generate / prepare / total [s]",
         f"{generated - began:.1f} / {prepared - generated:.1f} / {time.perf_counter() - began:.1f}"),
    ]
    width = max(len(name) for name, _ in table_rows)
    print()
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in table_rows:
        print(f"{name:<{width}}  {value}")
    try:
        load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        load = "n/a"
    print(f"\npeak RSS: resource.getrusage(RUSAGE_SELF).ru_maxrss of this process (the log is generated in a "
          f"child process).\nload average (1/5/15 min) at the end: {load} -- other processes skew both loops."
          f"\ndata: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
