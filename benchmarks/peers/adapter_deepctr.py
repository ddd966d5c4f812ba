"""DeepCTR-Torch 0.3.0: ``deepctr_torch.models`` SharedBottom / MMOE / PLE with ``model.compile`` and
``model.fit``, every model argument at its default except ``task_types``, ``task_names``,
``device='cpu'`` and ``seed`` (set to the common seed; its own default is 1024). Defaults that
apply: ``SparseFeat`` embedding_dim 4; SharedBottom bottom (256, 128), towers (64,); MMOE 3 experts
(256, 128), gate (64,), towers (64,); PLE 2 levels, 1 shared + 1 task-specific expert (256, 128),
gate (64,), towers (64,); l2 on embeddings 1e-5 (added to the loss), no dropout, no BatchNorm,
weights drawn with std 1e-4. ``fit`` sums (not averages) each task's loss over the batch.

Choices DeepCTR-Torch requires (``compile`` has no default optimizer or loss):
- optimizer ``"adam"`` (its string form: ``torch.optim.Adam(params)``, lr 1e-3), the optimizer the
  other two use by default; loss ``"binary_crossentropy"`` per binary task, ``"mse"`` per regression
  task; no ``metrics`` (they would be computed with scikit-learn on every training batch, and are
  pooled over tasks anyway; the test metrics come from the shared code).
- ``fit(batch_size=<common>, epochs=<common>, verbose=0)``; no validation data (fit has no early
  stopping or checkpointing, so validation would change nothing): the model after the last epoch is
  evaluated.

Training time: a DeepCTR callback stamps ``on_epoch_begin`` / ``on_epoch_end``; with no validation
data and no metrics nothing but training runs in between.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from metrics import EVALUATED_SPLITS


def run(dataset, paths, model: str, epochs: int, batch_size: int, seed: int, workdir: Path,
        eval_batch_size: int, embedding_dim: int | None = None, **_) -> dict:
    import torch
    from deepctr_torch.callbacks import Callback
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import MMOE, PLE, SharedBottom

    import peer_inputs

    inputs = peer_inputs.prepare(dataset, paths)
    torch.manual_seed(seed)
    np.random.seed(seed)
    sparse_options = {} if embedding_dim is None else {"embedding_dim": embedding_dim}
    columns = [SparseFeat(name, vocabulary_size=inputs.vocab_sizes[name], **sparse_options)
               for name in dataset.categorical]
    columns += [DenseFeat(name, 1) for name in dataset.numeric]
    task_types = ["binary" if kind == "binary" else "regression" for _, kind in dataset.tasks]
    factory = {"shared_bottom": SharedBottom, "mmoe": MMOE, "ple": PLE}[model]
    network = factory(columns, task_types=task_types, task_names=dataset.task_names, device="cpu", seed=seed)
    losses = ["binary_crossentropy" if kind == "binary" else "mse" for kind in task_types]
    network.compile("adam", loss=losses)

    class EpochClock(Callback):
        def __init__(self):
            super().__init__()
            self.epoch_seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self.start)

    clock = EpochClock()
    network.fit(dict(inputs.x["train"]), inputs.y["train"], batch_size=batch_size, epochs=epochs, verbose=0,
                callbacks=[clock])
    predictions = {}
    for split in EVALUATED_SPLITS:
        predicted = network.predict(dict(inputs.x[split]), batch_size=eval_batch_size)
        predictions[split] = {name: predicted[:, i] for i, name in enumerate(dataset.task_names)}
    embedding_dims = sorted({c.embedding_dim for c in columns if isinstance(c, SparseFeat)})
    sizes = {name: getattr(network, name) for name in ("bottom_dnn_hidden_units", "num_experts",
                                                       "expert_dnn_hidden_units", "gate_dnn_hidden_units",
                                                       "tower_dnn_hidden_units", "num_levels",
                                                       "shared_expert_num", "specific_expert_num")
             if hasattr(network, name)}
    return {
        "predictions": predictions,
        "frames": {split: inputs.frames[split] for split in EVALUATED_SPLITS},
        "params": sum(p.numel() for p in network.parameters()),
        "train_rows": len(inputs.y["train"]) * len(clock.epoch_seconds),
        "train_seconds": sum(clock.epoch_seconds),
        "epochs_run": len(clock.epoch_seconds),
        "settings": {
            "model": f"{factory.__name__}(columns, task_types={task_types}, task_names={dataset.task_names}, "
                     f"device='cpu', seed={seed})",
            "defaults_in_effect": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
            "embedding_dim": embedding_dims[0] if len(embedding_dims) == 1 else embedding_dims,
            "compile": f"compile('adam', loss={losses})",
            "optimizer": f"Adam(lr={network.optim.defaults['lr']}, "
                         f"weight_decay={network.optim.defaults['weight_decay']})",
            "fit": f"fit(x, y, batch_size={batch_size}, epochs={epochs}, verbose=0)",
            "evaluated": "the model after the last epoch",
            "batch_size": batch_size,
        },
    }
