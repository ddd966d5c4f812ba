"""The checkpoint's metrics on its test split, for the bundle's manifest."""

from __future__ import annotations

import math
from pathlib import Path

from lightning.pytorch import Trainer

from fusionrec.data.datamodule import MultiTaskDataModule
from fusionrec.errors import ConfigError
from fusionrec.training.checkpoint import read_checkpoint
from fusionrec.training.module import MultiTaskModule


def test_split_metrics(checkpoint: str | Path, module: MultiTaskModule) -> dict[str, float | None]:
    """Rebuild the checkpoint's data module (its saved settings, the checkpoint's fitted preprocessing) and
    evaluate ``module`` on the test split: ``{"test/click/auc": ..., "test/loss": ...}``."""
    state = read_checkpoint(checkpoint)
    settings = state.get("datamodule_hyper_parameters")
    if not settings:
        raise ConfigError(f"{checkpoint}: the checkpoint does not record its data settings, so its test split "
                          f"cannot be evaluated; export with --skip-test-metrics")
    # LightningCLI adds private entries (``_instantiator``) to the saved settings.
    datamodule = MultiTaskDataModule(**{key: value for key, value in settings.items() if not key.startswith("_")})
    datamodule.use_checkpoint(str(checkpoint))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    datamodule.setup("test")
    if "test" not in datamodule.tables:
        raise ConfigError(f"{checkpoint}: its data settings have no test split; export with --skip-test-metrics")
    (metrics,) = trainer.test(module, datamodule=datamodule, verbose=False)
    module.eval()
    # null: not defined on this split (an AUC over one class is NaN), which JSON cannot carry.
    return {name: float(value) if math.isfinite(value) else None for name, value in sorted(metrics.items())}
