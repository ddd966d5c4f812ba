"""One child process of ``run.py``: prepares a dataset's split, or trains and tests one framework on
one model and writes a JSON result. Run by ``run.py``, one process per framework x model, so that
each one's peak RSS (``ru_maxrss``, read by the parent with ``os.wait4``) is its own.

    python worker.py prepare SPEC.json OUT.json
    python worker.py train   SPEC.json OUT.json
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
import types
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import datasets  # noqa: E402
import metrics  # noqa: E402

ADAPTERS = {"fusionrec": "adapter_fusionrec", "torch-rechub": "adapter_rechub", "deepctr-torch": "adapter_deepctr"}
DISTRIBUTIONS = {"fusionrec": "fusionrec", "torch-rechub": "torch-rechub", "deepctr-torch": "deepctr-torch"}


def _dataset(spec: dict) -> datasets.Dataset:
    return datasets.make(spec["dataset"], types.SimpleNamespace(**spec["data_args"]))


def prepare(spec: dict) -> dict:
    dataset = _dataset(spec)
    paths = datasets.prepare(dataset, Path(spec["cache"]))
    return {"paths": {k: str(v) for k, v in paths.items()}, "splits": datasets.describe(paths, dataset),
            "split": dataset.split}


def train(spec: dict) -> dict:
    import importlib
    import importlib.metadata

    began = time.perf_counter()
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    dataset = _dataset(spec)
    paths = datasets.split_paths(dataset, Path(spec["cache"]))
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    adapter = importlib.import_module(ADAPTERS[spec["framework"]])
    options = {}
    if spec["framework"] == "deepctr-torch" and spec.get("deepctr_embedding_dim"):
        options["embedding_dim"] = spec["deepctr_embedding_dim"]
    if spec["framework"] == "fusionrec" and spec.get("fusionrec_overrides"):
        options["overrides"] = spec["fusionrec_overrides"]
    if spec["framework"] == "torch-rechub":
        options["embedding_dim"] = spec["rechub_embedding_dim"]
    result = adapter.run(dataset, paths, spec["model"], epochs=spec["epochs"], batch_size=spec["batch_size"],
                         seed=spec["seed"], workdir=workdir, eval_batch_size=spec["eval_batch_size"], **options)
    frames, predictions = result.pop("frames"), result.pop("predictions")
    scores = {split: metrics.all_metrics(dataset.tasks, frames[split], predictions[split])
              for split in metrics.EVALUATED_SPLITS}
    save_predictions(Path(spec["predictions"]), predictions)

    import torch

    return {
        **result,
        "metrics": scores["test"],
        "val_metrics": scores["val"],
        "rows_per_s": result["train_rows"] / result["train_seconds"] if result["train_seconds"] else None,
        "maxrss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": time.perf_counter() - began,
        "version": importlib.metadata.version(DISTRIBUTIONS[spec["framework"]]),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def save_predictions(path: Path, predictions: dict) -> None:
    """Every held-out row's score, ``{split}/{task}`` in the split file's row order, for analyses
    that resample rows (``user_bootstrap.py``); written whole or not at all."""
    import numpy as np

    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(partial, **{f"{split}/{task}": np.asarray(values, dtype=np.float64).reshape(-1)
                                    for split, tasks in predictions.items() for task, values in tasks.items()})
    os.replace(partial, path)


def main() -> None:
    command, spec_path, out_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    result = {"prepare": prepare, "train": train}[command](spec)
    partial = Path(out_path).with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=2, default=str))
    os.replace(partial, out_path)
    sys.stdout.flush()
    sys.stderr.flush()
    # deepctr_torch starts a non-daemon thread at import that asks pypi.python.org for its latest
    # version (requests.get without a timeout); don't let a slow network hold the process open.
    os._exit(0)


if __name__ == "__main__":
    main()
