"""torch-rechub 0.9.0: ``torch_rechub.models.multi_task`` SharedBottom / MMOE / PLE trained by its
``MTLTrainer`` with that trainer's defaults (Adam, lr 1e-3, weight_decay 1e-5; no scheduler; loss =
mean of the task losses (BCE on probabilities, MSE on raw values); early stopping on task 0's
validation metric with patience 10, restoring the best weights only when it triggers). The data go
through its documented ``DataGenerator(x, y).generate_dataloader(x_val, y_val, x_test, y_test,
batch_size)`` (per-row ``Dataset`` + default collation, num_workers 0).

Choices torch-rechub requires (it has no default for them):
- embedding size: 16 (fusionrec's default). ``SparseFeature``'s own default, ``6 * vocab ** 0.25``
  per feature, gives mixed sizes, which the multi-task models cannot concatenate (RuntimeError in
  ``EmbeddingLayer``), so a size must be given.
- hidden sizes: fusionrec's default sizes for the same trunk, read from fusionrec's trunk and head
  signatures at run time: shared-bottom ``hidden``; MMoE ``num_experts`` x ``expert_hidden``; PLE
  ``num_levels``, ``shared_experts``, ``task_experts``, ``expert_hidden``; towers = fusionrec's head
  ``tower``. torch-rechub's MLP always adds BatchNorm after every Linear (no switch), gates included.
- ``model_path``: a scratch directory (it saves ``model_base_0.pth`` there; the default is ``./``).

Training time: ``MTLTrainer.train_one_epoch`` is timed (the per-epoch validation ``fit`` runs after
it is not). The model evaluated is ``trainer.model`` as ``fit`` leaves it.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import numpy as np

from metrics import EVALUATED_SPLITS


def fusionrec_default_sizes(model: str) -> dict:
    """fusionrec's default trunk options and head tower (whatever fusionrec's defaults are now)."""
    from fusionrec.plugins import get_registry

    registry = get_registry()

    def defaults(factory):
        return {name: p.default for name, p in inspect.signature(factory).parameters.items()
                if p.default is not p.empty}

    trunk = defaults(registry.get("trunks", model, "model.trunk").factory)
    tower = defaults(registry.get("heads", "binary", "model.tasks").factory)["tower"]
    return {"trunk": {k: list(v) if isinstance(v, tuple) else v for k, v in trunk.items()}, "tower": list(tower)}


def run(dataset, paths, model: str, epochs: int, batch_size: int, seed: int, workdir: Path,
        eval_batch_size: int, embedding_dim: int = 16, **_) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE, PLE, SharedBottom
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator, PredictDataset

    import peer_inputs

    inputs = peer_inputs.prepare(dataset, paths)
    torch.manual_seed(seed)
    np.random.seed(seed)
    features = [SparseFeature(name, vocab_size=inputs.vocab_sizes[name], embed_dim=embedding_dim)
                for name in dataset.categorical]
    features += [DenseFeature(name) for name in dataset.numeric]
    task_types = ["classification" if kind == "binary" else "regression" for _, kind in dataset.tasks]
    sizes = fusionrec_default_sizes(model)
    trunk, towers = sizes["trunk"], [{"dims": sizes["tower"]} for _ in task_types]
    if model == "shared_bottom":
        options = {"bottom_params": {"dims": trunk["hidden"]}, "tower_params_list": towers}
        network = SharedBottom(features, task_types, **options)
    elif model == "mmoe":
        options = {"n_expert": trunk["num_experts"], "expert_params": {"dims": trunk["expert_hidden"]},
                   "tower_params_list": towers}
        network = MMOE(features, task_types, **options)
    elif model == "ple":
        options = {"n_level": trunk["num_levels"], "n_expert_specific": trunk["task_experts"],
                   "n_expert_shared": trunk["shared_experts"], "expert_params": {"dims": trunk["expert_hidden"]},
                   "tower_params_list": towers}
        network = PLE(features, task_types, **options)
    else:
        raise ValueError(model)

    generator = DataGenerator(inputs.x["train"], inputs.y["train"])
    train_loader, val_loader, _ = generator.generate_dataloader(
        x_val=inputs.x["val"], y_val=inputs.y["val"], x_test=inputs.x["test"], y_test=inputs.y["test"],
        batch_size=batch_size)
    trainer = MTLTrainer(network, task_types=task_types, n_epoch=epochs, device="cpu", model_path=str(workdir))

    epoch_seconds: list[float] = []
    train_one_epoch = trainer.train_one_epoch

    def timed_epoch(data_loader):
        start = time.perf_counter()
        result = train_one_epoch(data_loader)
        epoch_seconds.append(time.perf_counter() - start)
        return result

    trainer.train_one_epoch = timed_epoch
    trainer.fit(train_loader, val_loader)

    stopper = trainer.early_stopper
    predictions = {}
    for split in EVALUATED_SPLITS:
        loader = DataLoader(PredictDataset(inputs.x[split]), batch_size=eval_batch_size, shuffle=False)
        predicted = np.asarray(trainer.predict(trainer.model, loader), dtype=np.float64)
        predictions[split] = {name: predicted[:, i] for i, name in enumerate(dataset.task_names)}
    optimizer = trainer.optimizer
    return {
        "predictions": predictions,
        "frames": {split: inputs.frames[split] for split in EVALUATED_SPLITS},
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "train_rows": len(inputs.y["train"]) * len(epoch_seconds),
        "train_seconds": sum(epoch_seconds),
        "epochs_run": len(epoch_seconds),
        "settings": {
            "model": f"{type(network).__name__}(features, {task_types}, "
                     + ", ".join(f"{k}={v}" for k, v in options.items()) + ")",
            "embedding_dim": embedding_dim,
            "trainer": f"MTLTrainer(model, task_types, n_epoch={epochs}, device='cpu', model_path=<scratch>)",
            "optimizer": f"{type(optimizer).__name__}(lr={optimizer.defaults['lr']}, "
                         f"weight_decay={optimizer.defaults['weight_decay']})",
            "early_stopping": f"task 0 ({dataset.task_names[0]}) validation metric, patience "
                              f"{stopper.patience}, mode {stopper.mode}; best {stopper.best_auc:.5f}",
            "evaluated": "trainer.model after fit (best weights restored only if early stopping triggered)"
                         + ("; it triggered" if len(epoch_seconds) < epochs else "; it did not trigger"),
            "batch_size": batch_size,
        },
    }
