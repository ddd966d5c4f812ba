"""fusionrec, exactly as ``fusionrec fit`` builds it: ``make_cli(argv, run=False)`` on a config that
holds only the data section (the split files, the features, the batch size), ``model.tasks``,
``model.trunk.name`` and ``trainer.max_epochs``. Every other setting -- embedding size, trunk sizes,
towers, optimizer, learning rate, callbacks (checkpointing, early stopping if the defaults have it),
logger -- is whatever fusionrec's defaults are at the time of the run. Command-line additions:
``--seed_everything`` (the common seed), ``--trainer.default_root_dir`` (a scratch directory) and
``--trainer.enable_progress_bar false``. ``run.py --fusionrec-overrides`` merges more settings into
that config, for trying a candidate default; the published table uses none.

Training time: a callback stamps ``on_train_epoch_start`` and every ``on_train_batch_end``; an
epoch's training time runs from its start to its last batch's end, so the validation Lightning runs
after the last batch (and the sanity check before the first epoch) is not counted.

Predictions: ``trainer.predict`` on the validation and the test split with the best checkpoint
(``trainer.checkpoint_callback.best_model_path``) if there is one, else the current weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from metrics import EVALUATED_SPLITS


def config(dataset, paths, epochs: int, batch_size: int, model: str) -> dict:
    features = {name: {"type": "categorical"} for name in dataset.categorical}
    features.update({name: {"type": "numeric"} for name in dataset.numeric})
    return {
        "trainer": {"max_epochs": epochs},
        "data": {**{split: str(path) for split, path in paths.items()}, "features": features,
                 "batch_size": batch_size},
        "model": {"tasks": {name: {"head": kind} for name, kind in dataset.tasks}, "trunk": {"name": model}},
    }


def run(dataset, paths, model: str, epochs: int, batch_size: int, seed: int, workdir: Path,
        overrides: dict | None = None, **_) -> dict:
    import lightning.pytorch as pl
    import pandas as pd
    import yaml
    from omegaconf import OmegaConf

    from fusionrec.cli import make_cli

    class TrainClock(pl.Callback):
        def __init__(self):
            self.epoch_seconds: list[float] = []
            self.rows = 0

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()
            self.epoch_seconds.append(0.0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.epoch_seconds[-1] = time.perf_counter() - self.start
            self.rows += len(batch)

    cfg = config(dataset, paths, epochs, batch_size, model)
    if overrides:  # run.py --fusionrec-overrides: trying a setting, not the defaults
        cfg = OmegaConf.to_container(OmegaConf.merge(cfg, overrides))
    cfg_path = workdir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    argv = ["--config", str(cfg_path), "--seed_everything", str(seed),
            "--trainer.default_root_dir", str(workdir), "--trainer.enable_progress_bar", "false"]
    sys.argv = sys.argv[:1]  # the worker's own arguments are not for LightningCLI (it warns when it sees both)
    cli = make_cli(argv, run=False)
    clock = TrainClock()
    default_callbacks = [_describe_callback(c) for c in cli.trainer.callbacks]
    cli.trainer.callbacks.append(clock)

    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    checkpoint = cli.trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    loaders = {"val": cli.datamodule.val_dataloader, "test": cli.datamodule.predict_dataloader}
    predictions, frames = {}, {}
    for split in EVALUATED_SPLITS:
        outputs = cli.trainer.predict(cli.model, dataloaders=loaders[split](), ckpt_path=best or None)
        frames[split] = pd.read_parquet(paths[split], columns=dataset.task_names)
        predictions[split] = _in_file_order(outputs, dataset.task_names, len(frames[split]), split)

    trunk = cli.model.model.trunk
    hparams = {k: v for k, v in cli.model.hparams.items() if k not in ("preprocessing", "tasks") and not k.startswith("_")}
    return {
        "predictions": predictions,
        "frames": frames,
        "params": sum(p.numel() for p in cli.model.parameters()),
        "train_rows": clock.rows,
        "train_seconds": sum(clock.epoch_seconds),
        "epochs_run": len(clock.epoch_seconds),
        "settings": {
            "config": cfg,
            "argv": argv,
            "evaluated": f"best checkpoint {Path(best).name}" if best else "last weights (no checkpoint)",
            "module_hparams": _plain(hparams),
            "trunk_defaults": _plain(_init_defaults(type(trunk))),
            "optimizers": [f"{type(o).__name__}(lr={o.defaults.get('lr')}, weight_decay={o.defaults.get('weight_decay')})" for o in cli.trainer.optimizers],
            "lr_schedulers": [type(c.scheduler).__name__ for c in cli.trainer.lr_scheduler_configs],
            "callbacks": default_callbacks,
            "batch_size": cli.datamodule.hparams.batch_size,
            "max_epochs": cli.trainer.max_epochs,
            "stopped_early": bool(getattr(cli.trainer, "should_stop", False)) and len(clock.epoch_seconds) < epochs,
        },
    }


def _in_file_order(outputs: list[dict], tasks: list[str], rows: int, split: str) -> dict[str, np.ndarray]:
    """``trainer.predict``'s per-batch outputs as one score per row of the split's file, in file order."""
    index = np.concatenate([step["index"].numpy() for step in outputs])
    if len(index) != rows or len(np.unique(index)) != rows:
        raise RuntimeError(f"fusionrec predicted {len(index)} rows ({len(np.unique(index))} distinct) "
                           f"for a {split} split of {rows}")
    scores = {}
    for name in tasks:
        scores[name] = np.empty(rows, dtype=np.float64)
        scores[name][index] = np.concatenate([step[name].float().numpy() for step in outputs])
    return scores


def _describe_callback(callback) -> str:
    keys = ("monitor", "mode", "patience", "min_delta", "save_top_k", "save_last")
    options = {k: getattr(callback, k) for k in keys if getattr(callback, k, None) is not None}
    return type(callback).__name__ + (f"({', '.join(f'{k}={v!r}' for k, v in options.items())})" if options else "")


def _plain(value):
    """Hyperparameters as JSON-able plain data."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _init_defaults(factory) -> dict:
    import inspect

    return {name: p.default for name, p in inspect.signature(factory).parameters.items()
            if p.default is not p.empty}
