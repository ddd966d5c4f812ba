"""fusionrec against torch-rechub and DeepCTR-Torch: same data, same splits, same seed, same batch
size and epoch budget, each framework with its own defaults; one table and a JSON file.

For every dataset x model (shared_bottom, mmoe, ple) x framework, one child process (``worker.py``)
reads the dataset's split from Parquet, trains, predicts the validation and test splits and computes
their metrics with the shared code (``metrics.py``: scikit-learn AUC / logloss on probabilities, RMSE
on values).
The child times training only (evaluation excluded) and this process reads the child's peak RSS with
``os.wait4`` (``ru_maxrss``). This process imports nothing heavy (no torch, no pandas), so its own
memory does not leak into a child's figure.

Run it from the repository root with the peers' venv (see README.md next to this file):

    .venv-peers/bin/python benchmarks/peers/run.py --json /tmp/fusionrec-peers/results.json
    .venv-peers/bin/python benchmarks/peers/run.py --rows 100000 --epochs 1 --models mmoe   # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datasets  # the split definitions only: os/pathlib imports, nothing heavy

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATASETS = datasets.NAMES
MODELS = ("shared_bottom", "mmoe", "ple")
FRAMEWORKS = ("fusionrec", "torch-rechub", "deepctr-torch")
REFERENCE = "fusionrec"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--epochs", type=int, default=10, help="max epochs, every framework")
    parser.add_argument("--rows", type=int, default=600_000, help="rows of the generated log")
    parser.add_argument("--users", type=int, default=50_000, help="users of the generated log")
    parser.add_argument("--items", type=int, default=20_000, help="items of the generated log")
    parser.add_argument("--seed", type=int, default=0, help="generator and split seed; the training seed too "
                                                            "unless --train-seeds says otherwise")
    parser.add_argument("--train-seeds", nargs="+", default=None, metavar="SEEDS",
                        help="training seeds, each run once per seed and reported as mean ± sd: '0 1 2' for "
                             "every dataset, or per dataset 'generated=0 ml100k=0,1,2'")
    parser.add_argument("--batch-size", type=int, default=1024, help="training batch size, every framework")
    parser.add_argument("--eval-batch-size", type=int, default=8192,
                        help="batch size for predicting the held-out splits (the peers' own default elsewhere)")
    parser.add_argument("--rechub-embedding-dim", type=int, default=16,
                        help="torch-rechub needs one (its per-feature auto size crashes the multi-task models)")
    parser.add_argument("--deepctr-embedding-dim", type=int, default=None,
                        help="DeepCTR-Torch embedding size (default: its own default, 4)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads in every child (default: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="write every result and setting here")
    parser.add_argument("--cache-dir", type=Path, default=datasets.default_cache(),
                        help="splits, scratch directories and child logs ($FUSIONREC_PEERS_CACHE)")
    parser.add_argument("--ml100k-dir", type=Path, default=datasets.ML100K_DIR)
    parser.add_argument("--python", default=sys.executable, help="interpreter for the child processes")
    parser.add_argument("--fusionrec-overrides", default=None, metavar="YAML",
                        help="merged into fusionrec's config, e.g. '{model: {embedding_dim: 8}}': for trying a "
                             "default before changing it; the tables in benchmarks/peers/README.md use none")
    args = parser.parse_args(argv)
    if args.fusionrec_overrides is not None:
        import yaml

        args.fusionrec_overrides = yaml.safe_load(args.fusionrec_overrides)
        if not isinstance(args.fusionrec_overrides, dict):
            parser.error("--fusionrec-overrides: expected a YAML mapping such as '{model: {embedding_dim: 8}}'")
    args.seeds = train_seeds(parser, args)
    return args


def train_seeds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, list[int]]:
    """``--train-seeds`` as ``{dataset: [seed, ...]}``: plain seeds apply to every dataset,
    ``dataset=a,b`` to one."""
    common = [item for item in args.train_seeds or [] if "=" not in item]
    per_dataset = dict(item.split("=", 1) for item in args.train_seeds or [] if "=" in item)
    unknown = sorted(set(per_dataset) - set(DATASETS))
    if unknown:
        parser.error(f"--train-seeds: unknown dataset {', '.join(unknown)}; datasets: {', '.join(DATASETS)}")
    try:
        return {name: [int(v) for v in per_dataset[name].split(",")] if name in per_dataset
                else [int(v) for v in common] or [args.seed] for name in DATASETS}
    except ValueError as error:
        parser.error(f"--train-seeds: {error}")


# --------------------------------------------------------------------------- children


def run_child(args: argparse.Namespace, command: str, spec: dict, workdir: Path) -> tuple[dict | None, dict]:
    """Run ``worker.py command``; returns (its JSON result or None, process facts incl. peak RSS)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, log_path = workdir / "spec.json", workdir / "result.json", workdir / "log.txt"
    spec_path.write_text(json.dumps(spec, indent=2))
    if out_path.exists():
        out_path.unlink()
    began = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen([args.python, str(HERE / "worker.py"), command, str(spec_path), str(out_path)],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    facts = {"returncode": process.returncode, "peak_rss_mib": usage.ru_maxrss / 1024,
             "process_wall_s": time.perf_counter() - began, "log": str(log_path)}
    if process.returncode != 0 or not out_path.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-25:]
        facts["error"] = "\n".join(tail)
        return None, facts
    return json.loads(out_path.read_text()), facts


def data_args(args: argparse.Namespace) -> dict:
    return {"rows": args.rows, "users": args.users, "items": args.items, "seed": args.seed,
            "ml100k_dir": str(args.ml100k_dir)}


# --------------------------------------------------------------------------- table


def fmt_task(name: str, scores: dict | None) -> str:
    """``name AUC / logloss`` or ``name RMSE value``; with several seeds the headline figure is
    ``mean ± sd``."""
    if not scores:
        return ""

    def value(metric: str) -> str:
        sd = scores.get(f"{metric}_sd")
        return f"{scores[metric]:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")

    if "auc" in scores:
        return f"{name} {value('auc')} / {scores['logloss']:.4f}"
    return f"{name} RMSE {value('rmse')}"


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per dataset x model x framework: metrics as the mean over training seeds (with
    ``<metric>_sd`` when there are several), rows/s, epochs and train seconds as means, peak RSS as
    the largest. A failed seed fails the row."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["model"], run["framework"]), []).append(run)
    rows = []
    for (dataset, model, framework), group in groups.items():
        row = {"dataset": dataset, "model": model, "framework": framework, "seeds": [r["seed"] for r in group],
               "peak_rss_mib": max(r["peak_rss_mib"] for r in group)}
        failed = [r for r in group if r.get("error")]
        if failed:
            rows.append({**row, "error": failed[0]["error"]})
            continue
        metrics = {key: _seed_means(group, key) for key in ("metrics", "val_metrics")}
        rows.append({**row, **metrics, "params": group[0]["params"],
                     **{key: statistics.fmean(r[key] for r in group)
                        for key in ("rows_per_s", "epochs_run", "train_seconds")}})
    return rows


def _seed_means(group: list[dict], key: str) -> dict:
    """``{task: {metric: mean over seeds, metric_sd: sd}}`` of each run's ``run[key]``."""
    means = {}
    for task, scores in group[0][key].items():
        means[task] = {}
        for metric in scores:
            values = [r[key][task][metric] for r in group]
            means[task][metric] = statistics.fmean(values)
            if len(values) > 1:
                means[task][f"{metric}_sd"] = statistics.stdev(values)
    return means


def ratios(results: list[dict]) -> None:
    """fusionrec rows/s over each peer's, same dataset and model."""
    reference = {(r["dataset"], r["model"]): r.get("rows_per_s") for r in results if r["framework"] == REFERENCE}
    for r in results:
        ref = reference.get((r["dataset"], r["model"]))
        r["fusionrec_over_peer_rows_per_s"] = (ref / r["rows_per_s"]
                                               if r["framework"] != REFERENCE and ref and r.get("rows_per_s")
                                               else None)


def table(results: list[dict], task_names: dict[str, list[str]]) -> str:
    header = ["dataset", "model", "framework", "params", "epochs", "task 1: AUC / logloss",
              "task 2: AUC / logloss or RMSE", "task 1 on the validation split", "train rows/s",
              "fusionrec ÷ peer rows/s", "peak RSS MiB", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        if r.get("error"):
            cells = [r["dataset"], r["model"], r["framework"], "", "", "FAILED: " + r["error"].splitlines()[-1][:80],
                     "", "", "", "", f"{r['peak_rss_mib']:,.0f}", ""]
        else:
            tasks = task_names[r["dataset"]]
            ratio = r.get("fusionrec_over_peer_rows_per_s")
            cells = [r["dataset"], r["model"], r["framework"], f"{r['params']:,}", f"{r['epochs_run']:.3g}",
                     fmt_task(tasks[0], r["metrics"].get(tasks[0])), fmt_task(tasks[1], r["metrics"].get(tasks[1])),
                     fmt_task(tasks[0], r["val_metrics"].get(tasks[0])), f"{r['rows_per_s']:,.0f}",
                     f"{ratio:.2f}" if ratio else "—",
                     f"{r['peak_rss_mib']:,.0f}", f"{r['train_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rankings(summary: list[dict], task_names: dict[str, list[str]]) -> str:
    """Per dataset x model x task, the frameworks from best to worst (AUC down, RMSE up), so that a
    cell a peer wins reads as such."""
    lines = []
    cells: dict[tuple, list[dict]] = {}
    for row in summary:
        if not row.get("error"):
            cells.setdefault((row["dataset"], row["model"]), []).append(row)
    for (dataset, model), rows in cells.items():
        for task in task_names[dataset]:
            for split, key in (("", "metrics"), (" on the validation split", "val_metrics")):
                metric = "auc" if "auc" in rows[0][key][task] else "rmse"
                ranked = sorted(rows, key=lambda r: r[key][task][metric], reverse=metric == "auc")
                order = ", ".join(f"{r['framework']} {r[key][task][metric]:.4f}" for r in ranked)
                lines.append(f"{dataset} {model} {task} {metric.upper()}{split}, best first: {order}")
    return "\n".join(lines)


def loadavg() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (args.cache_dir / "runs").mkdir(parents=True, exist_ok=True)
    # A run of its own even when another starts within the same second.
    run_dir = Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=args.cache_dir / "runs"))
    meta = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:],
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cores": os.cpu_count(), "platform": platform.platform(), "loadavg_start": loadavg(),
            "peak_rss": "ru_maxrss of each child process (os.wait4): the whole process -- imports, reading the "
                        "split, preprocessing, training, predicting the validation and test splits",
            "train_rows_per_s": "training rows / training seconds, all epochs; evaluation excluded"}
    print(f"fusionrec vs peers: datasets {args.datasets}, models {args.models}, frameworks {args.frameworks}, "
          f"epochs {args.epochs}, batch {args.batch_size}, data seed {args.seed}, training seeds {args.seeds}; "
          f"work dir {run_dir}", flush=True)
    if args.fusionrec_overrides:
        print(f"fusionrec runs with --fusionrec-overrides {args.fusionrec_overrides}: not its defaults", flush=True)

    prepared, task_names = {}, {}
    for name in args.datasets:
        spec = {"dataset": name, "data_args": data_args(args), "cache": str(args.cache_dir)}
        info, facts = run_child(args, "prepare", spec, run_dir / f"prepare-{name}")
        if info is None:
            print(f"preparing {name} failed:\n{facts['error']}", file=sys.stderr)
            return 1
        prepared[name] = info
        task_names[name] = [t for t in next(iter(info["splits"].values())) if t != "rows"]
        rows = ", ".join(f"{split} {v['rows']:,}" for split, v in info["splits"].items())
        print(f"{name}: {info['split']} -> {rows}; label means (train) "
              + ", ".join(f"{t} {info['splits']['train'][t]}" for t in task_names[name]), flush=True)

    jobs = [(d, m, f, seed) for d in args.datasets for m in args.models for f in args.frameworks
            for seed in args.seeds[d]]
    results = []
    for number, (dataset, model, framework, seed) in enumerate(jobs, 1):
        spec = {"dataset": dataset, "data_args": data_args(args), "cache": str(args.cache_dir),
                "framework": framework, "model": model, "epochs": args.epochs, "batch_size": args.batch_size,
                "eval_batch_size": args.eval_batch_size, "seed": seed, "threads": args.threads,
                "rechub_embedding_dim": args.rechub_embedding_dim,
                "deepctr_embedding_dim": args.deepctr_embedding_dim, "fusionrec_overrides": args.fusionrec_overrides}
        workdir = run_dir / f"{dataset}-{model}-{framework}-seed{seed}"
        spec["workdir"] = str(workdir / "scratch")
        spec["predictions"] = str(workdir / "predictions.npz")
        result, facts = run_child(args, "train", spec, workdir)
        entry = {"dataset": dataset, "model": model, "framework": framework, "seed": seed, **(result or {}), **facts}
        if result is not None:
            entry["predictions"] = spec["predictions"]
        results.append(entry)
        if result is None:
            print(f"[{number}/{len(jobs)}] {dataset} {model} {framework} seed {seed}: FAILED (log {facts['log']})\n"
                  f"{facts['error']}", flush=True)
            continue
        scores = "; ".join(fmt_task(t, result["metrics"][t]) for t in task_names[dataset])
        print(f"[{number}/{len(jobs)}] {dataset} {model} {framework} seed {seed}: {result['params']:,} params, "
              f"{result['epochs_run']} epochs, {result['rows_per_s']:,.0f} train rows/s "
              f"({result['train_seconds']:.1f} s), peak RSS {facts['peak_rss_mib']:,.0f} MiB, "
              f"{facts['process_wall_s']:.0f} s wall; {scores}", flush=True)

    summary = aggregate(results)
    ratios(summary)
    meta["loadavg_end"] = loadavg()
    meta["wall_s"] = time.perf_counter() - began
    print()
    print(table(summary, task_names))
    print()
    print(rankings(summary, task_names))
    print(f"\ntask 1 / task 2: generated = click / conversion (both AUC / logloss); ml100k, ml100k-per-user = "
          f"liked (AUC / logloss) / rating (RMSE). Test split of each dataset (and task 1 on the validation split, same model); metrics "
          f"by the same scikit-learn code for every framework; "
          f"training seeds {', '.join(f'{d} {args.seeds[d]}' for d in args.datasets)} (mean ± sd where several).\n"
          f"train rows/s: training rows over training seconds, all epochs, evaluation excluded. peak RSS: ru_maxrss "
          f"of the framework's own process (imports, data, training, predictions).\n"
          f"load average (1/5/15 min) at start {meta['loadavg_start']}, at end {meta['loadavg_end']}; "
          f"{os.cpu_count()} cores; wall time {meta['wall_s'] / 60:.1f} min. Child logs under {run_dir}.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "datasets": prepared, "summary": summary, "runs": results}, indent=2,
                                        default=str))
        print(f"wrote {args.json}")
    return 0 if all(not r.get("error") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
