"""How much of a gap between two frameworks on a held-out split belongs to that split's users: a
paired bootstrap over users. Training seeds say how much a result moves when the model is trained
again; they say nothing about how much it would move on other users of the same period. ml-100k's
test period has 10,000 rows from only 166 users (the validation period 197; one user alone has 428
rows), and its liked AUC pools them all, so a few users' ratings can decide a cell.

Each resample draws the split's users with replacement (a user drawn k times counts k times, all
their rows), scores every framework's every training seed on those rows (run.py's metric code, the
rows weighted by k), averages over the seeds and takes the difference. The same
resamples serve both frameworks, so what the two rank alike cancels. Reported per dataset x model x
task x split: the observed difference of the seed means, its 95% interval over the resamples, and
the share of resamples in which the first framework is ahead.

    .venv-peers/bin/python benchmarks/peers/run.py --threads 1 --datasets ml100k --models ple \\
        --frameworks fusionrec deepctr-torch --train-seeds ml100k=0,1,2,3,4,5,6,7,8,9 --json ple.json
    .venv-peers/bin/python benchmarks/peers/user_bootstrap.py ple.json

It reads the predictions run.py keeps per run (``predictions.npz`` next to each child's log) and the
split files, both named in the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import metrics

USER_COLUMN = "user_id"


def compared_cells(results: dict, frameworks: list[str]) -> list[tuple[str, str, dict[str, list[dict]]]]:
    """``(dataset, model, {framework: its runs})`` for every cell both frameworks ran; a cell with a
    failed seed is left out, as run.py's table fails its row, so both compare the same seeds."""
    cells = []
    for dataset, model in sorted({(r["dataset"], r["model"]) for r in results["runs"]}):
        runs = {framework: [r for r in results["runs"] if (r["dataset"], r["model"], r["framework"])
                            == (dataset, model, framework)] for framework in frameworks}
        if not all(runs.values()):
            continue
        failed = [f"{r['framework']} seed {r['seed']}" for group in runs.values() for r in group if r.get("error")]
        if failed:
            print(f"{dataset} {model}: left out, failed runs ({', '.join(failed)})", file=sys.stderr)
            continue
        for framework, group in runs.items():
            missing = [r["seed"] for r in group if not Path(r.get("predictions") or "").is_file()]
            if missing:
                raise SystemExit(f"{dataset} {model} {framework}: no predictions file for seeds {missing} (a run "
                                 f"from before run.py kept them; rerun run.py)")
        cells.append((dataset, model, runs))
    return cells


def seed_mean(kind: str, labels: np.ndarray, runs: list[np.ndarray], weights: np.ndarray) -> float:
    """The headline metric (AUC or RMSE) averaged over the training seeds, by run.py's metric code."""
    name = "auc" if kind == "binary" else "rmse"
    return float(np.mean([metrics.task_metrics(kind, labels, scores, weights)[name] for scores in runs]))


def load_predictions(path: str) -> dict[str, np.ndarray]:
    """A run's ``predictions.npz`` read whole, the file closed again."""
    with np.load(path) as archive:
        return dict(archive)


def bootstrap(frame: pd.DataFrame, task: str, kind: str, first: list[np.ndarray], second: list[np.ndarray],
              resamples: int, rng: np.random.Generator) -> dict:
    """The first framework's lead (AUC: first - second; RMSE: second - first, so > 0 = first ahead)
    and its distribution over user resamples."""
    labels = frame[task].to_numpy(dtype=np.float64)
    users, row_user = np.unique(frame[USER_COLUMN].to_numpy(), return_inverse=True)
    sign = 1.0 if kind == "binary" else -1.0

    def lead(weights: np.ndarray) -> float:
        return sign * (seed_mean(kind, labels, first, weights) - seed_mean(kind, labels, second, weights))

    observed = lead(np.ones(len(frame)))
    leads = np.array([lead(rng.multinomial(len(users), np.full(len(users), 1 / len(users)))[row_user].astype(float))
                      for _ in range(resamples)])
    low, high = np.percentile(leads, [2.5, 97.5])
    return {"users": len(users), "rows": len(frame), "observed": observed, "low": float(low), "high": float(high),
            "first_ahead": float(np.mean(leads > 0))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="run.py --json output")
    parser.add_argument("--frameworks", nargs=2, default=["fusionrec", "deepctr-torch"], metavar=("FIRST", "SECOND"))
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="the resampling's seed")
    args = parser.parse_args(argv)
    first, second = args.frameworks
    if first == second:
        parser.error(f"--frameworks: two different frameworks, not {first} twice")
    try:
        results = json.loads(args.results.read_text())
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"{args.results}: not a run.py --json file ({error})")
    cells = compared_cells(results, args.frameworks)
    if not cells:
        raise SystemExit(f"{args.results}: no dataset x model that both {first} and {second} finished")
    print(f"{first} ahead of {second} (AUC: {first} - {second}; RMSE: {second} - {first}), seed means, "
          f"95% interval over {args.resamples} resamples of the split's users\n")
    print("| dataset | model | task | split | users | observed | 95% interval | resamples with "
          f"{first} ahead |\n|---|---|---|---|---|---|---|---|")
    for dataset, model, runs in cells:
        kinds = {task: "binary" if "auc" in scores else "regression" for task, scores in runs[first][0]["metrics"].items()}
        predictions = {framework: [load_predictions(r["predictions"]) for r in group] for framework, group in runs.items()}
        for split in metrics.EVALUATED_SPLITS:
            frame = pd.read_parquet(results["datasets"][dataset]["paths"][split], columns=[USER_COLUMN, *kinds])
            for task, kind in kinds.items():
                key = f"{split}/{task}"
                cell = bootstrap(frame, task, kind, [p[key] for p in predictions[first]],
                                 [p[key] for p in predictions[second]], args.resamples,
                                 np.random.default_rng(args.seed))
                name = f"{task} {'AUC' if kind == 'binary' else 'RMSE'}"
                print(f"| {dataset} | {model} | {name} | {split} | {cell['users']} | {cell['observed']:+.4f} | "
                      f"[{cell['low']:+.4f}, {cell['high']:+.4f}] | {cell['first_ahead']:.1%} |", flush=True)


if __name__ == "__main__":
    main()
