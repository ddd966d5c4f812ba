"""The LightningModule: the multi-task model, its balanced loss, per-task metrics and optimiser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

import fusionrec
from fusionrec.components import FieldEncoder
from fusionrec.components.options import NonNegativeFloat, PositiveFloat, PositiveInt
from fusionrec.components.trunk import ScenarioTrunk
from fusionrec.data.batches import Batch
from fusionrec.data.feature_cache import FeatureCache
from fusionrec.data.media import MediaBatch
from fusionrec.data.preprocessing import RESERVED, Preprocessor
from fusionrec.data.schema import parse_tasks
from fusionrec.data.synthetic import cache_dir
from fusionrec.errors import ConfigError
from fusionrec.models.content import ContentField
from fusionrec.models.multitask import MultiTaskModel, default_encoder
from fusionrec.plugins import Registry, check_options, get_registry
from fusionrec.training.cost import model_costs, print_costs, table_memory_warning

EVAL_STAGES = ("val", "test")
# The component each of these model arguments names when a config leaves it unset.
DEFAULT_COMPONENTS = {"fusion": "concat", "trunk": "shared_bottom", "balancer": "fixed"}


def component_config(key: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """``model.<key>`` as configured (or null) -> ``{name, **options}`` with the default name filled in."""
    return {"name": DEFAULT_COMPONENTS[key], **(config or {})}


class MultiTaskModule(LightningModule):
    """Trains a :class:`MultiTaskModel` on ``L = balancer({task: L_i})``.

    Args:
        tasks: ``{task: {head, label, weight, **head options}}``; ``weight`` is alpha_i.
        embedding_dim: default output width of every field encoder.
        encoders: per-field encoder overrides ``{field: {name, dim, **options}}``.
        fusion: ``{name: concat, **options}``.
        trunk: ``{name: shared_bottom|mmoe|ple|star|pepnet|scenario_towers, **options}`` (the scenario-aware
            ones need data.scenario; docs/scenarios.md).
        balancer: ``{name: fixed, **options}``.
        embedding_budget_mib: fit warns when the embedding tables' weights exceed it (fit prints
            every table's and encoder's parameters and memory at its start either way).
        preprocessing: the fitted vocabularies and statistics. Filled in from the data module on
            the first fit and stored in every checkpoint; leave it unset in configs.
    """

    def __init__(self, tasks: dict[str, dict[str, Any]], embedding_dim: PositiveInt = 16,
                 encoders: dict[str, dict[str, Any]] | None = None, fusion: dict[str, Any] | None = None,
                 trunk: dict[str, Any] | None = None, balancer: dict[str, Any] | None = None,
                 learning_rate: PositiveFloat = 1e-3, weight_decay: NonNegativeFloat = 0.0,
                 embedding_budget_mib: PositiveFloat | None = None, preprocessing: dict[str, Any] | None = None):
        super().__init__()
        # LightningCLI passes jsonargparse's int and float subclasses (PositiveInt, ...); checkpoints
        # hold plain numbers, so that they load with weights_only=True.
        embedding_dim, learning_rate, weight_decay = int(embedding_dim), float(learning_rate), float(weight_decay)
        embedding_budget_mib = None if embedding_budget_mib is None else float(embedding_budget_mib)
        # logger=False: the resolved config is saved by the CLI; vocabularies don't belong in hparams.yaml.
        self.save_hyperparameters(logger=False)
        self.registry = get_registry()
        self.task_specs = parse_tasks(tasks, self.registry)
        self.fusion_config, self.trunk_config, self.balancer_config = (
            component_config(key, value) for key, value in (("fusion", fusion), ("trunk", trunk), ("balancer", balancer)))
        balancer_options = dict(self.balancer_config)
        self.balancer = self.registry.build("balancers", balancer_options.pop("name"), "model.balancer",
                                            {name: spec.weight for name, spec in self.task_specs.items()},
                                            **balancer_options)
        self._check_component_options()
        self.model: MultiTaskModel | None = None
        self._reported_problems: set[tuple[str, str]] = set()
        self._missing_rows: dict[tuple[str, str], Tensor] = {}
        if preprocessing is not None:
            self._build(preprocessing)

    def _check_component_options(self) -> None:
        """Every configured component's options against its factory's signature, before the data is
        read: the components are built in setup, once the fitted preprocessing gives their inputs.
        The skipped leading parameters are the ones the model passes (a trunk's input_dim, tasks...)."""
        registry = self.registry
        fusion = dict(self.fusion_config)
        registry.check("fusions", fusion.pop("name"), "model.fusion", fusion, skip=1)
        trunk = dict(self.trunk_config)
        name = trunk.pop("name")
        scenario_aware = issubclass(registry.get("trunks", name, "model.trunk").factory, ScenarioTrunk)
        registry.check("trunks", name, "model.trunk", trunk, skip=3 if scenario_aware else 2)
        for field, override in (self.hparams.encoders or {}).items():
            key = f"model.encoders.{field}"
            options = {option: value for option, value in override.items() if option != "dim" or value is not None}
            if "name" in options:  # dim, when given, is checked as the encoder's second parameter
                registry.check("encoders", options.pop("name"), key, options, skip=1 if "dim" in options else 2)
            elif "dim" in options:  # the field's default encoder depends on its type, known from the data
                check_options(FieldEncoder, {"dim": options["dim"]}, key, skip=1)

    def _build(self, preprocessing: dict[str, Any]) -> None:
        hp = self.hparams
        preprocessor = Preprocessor(preprocessing)
        tasks = {name: {"head": spec.head, "options": spec.options} for name, spec in self.task_specs.items()}
        missing = sorted(set(tasks) - set(preprocessing["tasks"]))
        if missing:
            raise ConfigError(f"model.tasks: task(s) {', '.join(missing)} have no fitted labels in the preprocessing")
        self.model = MultiTaskModel.build(
            self.registry, preprocessor.field_infos(), tasks,
            {name: preprocessing["tasks"][name]["labels"] for name in tasks}, hp.embedding_dim,
            dict(hp.encoders or {}), self.fusion_config, self.trunk_config, preprocessing.get("scenario"))
        self.metrics = nn.ModuleDict({
            stage: nn.ModuleDict({task: nn.ModuleDict(head.metrics()) for task, head in self.model.heads.items()})
            for stage in EVAL_STAGES})
        # With data.scenario, every task's metrics once more per scenario, on the rows of that
        # scenario: ``scenario_metrics[stage][task][str(position)]``, ``self.scenarios[position]``
        # = (scenario name, its categorical id).
        self.scenario_column = preprocessing.get("scenario")
        vocabulary = preprocessing["features"][self.scenario_column]["vocabulary"] if self.scenario_column else []
        self.scenarios = [(name, position + RESERVED) for position, name in enumerate(vocabulary)]
        self.scenario_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({task: nn.ModuleDict({str(position): nn.ModuleDict(head.metrics())
                                                       for position in range(len(self.scenarios))})
                                  for task, head in self.model.heads.items()})
            for stage in EVAL_STAGES})

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if self.model is None:
            if getattr(datamodule, "preprocessor", None) is None:
                raise ConfigError("model: no fitted preprocessing; train with a MultiTaskDataModule")
            self.hparams["preprocessing"] = datamodule.preprocessor.state
            self._build(datamodule.preprocessor.state)
        self.attach_content_encoders(getattr(datamodule, "tables", {}))

    def content_fields(self) -> dict[str, ContentField]:
        return {name: e for name, e in self.model.encoders.items() if isinstance(e, ContentField)}

    def attach_content_encoders(self, tables: dict) -> None:
        """Give every split's media columns what their batches need: a frozen encoder's features,
        computed once per distinct item through the on-disk cache, or the encoder's ``prepare``
        (run by the DataLoader workers)."""
        fields = self.content_fields()
        if not fields:
            return
        cache = FeatureCache(cache_dir() / "features")
        for name, content in fields.items():
            encoder, columns = content.encoder, [table.media[name] for table in tables.values()]
            if encoder.trainable_backbone:
                for column in columns:
                    column.prepare = encoder.prepare
                continue
            # One lookup over the items of every split, so an item shown in several is hashed once.
            items = list(dict.fromkeys(item for column in columns for item in column.contents))
            features, present = cache.features(encoder, items, encoder.field.type)
            row = {item: i for i, item in enumerate(items)}
            for column in columns:
                rows = torch.tensor([row[item] for item in column.contents], dtype=torch.long)
                column.features, column.feature_present = features[rows], present[rows]

    def _count_content(self, batch: Batch, stage: str) -> None:
        """Per media field: add up the rows without usable content (logged once per epoch), and
        warn once per unreadable item, naming its path and a row that shows it."""
        for name, feature in batch.features.items():
            if not isinstance(feature, MediaBatch):
                continue
            key = (stage, name)
            self._missing_rows[key] = self._missing_rows.get(key, 0) + feature.missing_rows()
            for content, row, reason in feature.problems:
                if (name, content) not in self._reported_problems:
                    self._reported_problems.add((name, content))
                    rank_zero_warn(f"data.features.{name}: {content} (row {row} of the {stage} split): {reason}; "
                                   f"counted as missing (set data.features.{name}.strict: true to stop instead)")

    def _log_missing_rows(self, stage: str) -> None:
        for key in [key for key in self._missing_rows if key[0] == stage]:
            self.log(f"{stage}/{key[1]}/missing_rows", self._missing_rows.pop(key).float(), reduce_fx="sum",
                     sync_dist=True)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.model(features)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Batch.to moves every tensor in one pass, without Lightning's generic walk through the
        # dataclass (0.3-0.9 ms a step in a profile of a small PLE on CPU).
        if isinstance(batch, Batch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _labelled(self, task: str, output: Tensor, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        """A task's output, target and groups on the rows that carry its label. A conditional
        head's target also holds its parent's: ``[B, 2]``."""
        head = self.model.heads[task]
        target = batch.labels[task]
        if head.parent is not None:
            target = torch.stack([batch.labels[head.parent].to(target.dtype), target], -1)
        groups = batch.groups
        rows = batch.label_rows.get(task)
        if rows is not None:
            output, target = output[rows], target[rows]
            groups = None if groups is None else groups[rows]
        return output, target, groups

    def _losses(self, outputs: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        return {task: head.loss(*self._labelled(task, outputs[task], batch)) for task, head in self.model.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk's trainable parameters: where gradient-based balancers compare the tasks'
        gradients (never the embedding tables, whose dense per-task gradients would be huge)."""
        return [p for p in self.model.trunk.parameters() if p.requires_grad]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        self._count_content(batch, "train")
        losses = self._losses(self(batch.features), batch)
        total = self.balancer(losses, self.shared_parameters())
        self.log("train/loss", total, prog_bar=True, batch_size=len(batch))
        # The logger only writes every log_every_n_steps; logging per-task losses on the other steps
        # would cost ~1 ms a step for values nobody reads.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log_dict({f"train/{task}/loss": loss for task, loss in losses.items()}, batch_size=len(batch))
            self.log_dict({f"train/{task}/weight": weight for task, weight in self.balancer.task_weights().items()},
                          batch_size=len(batch))
        return total

    def _evaluation_step(self, batch: Batch, stage: str) -> dict[str, Tensor]:
        self._count_content(batch, stage)
        outputs = self(batch.features)
        losses = self._losses(outputs, batch)
        # The config's fixed weights, not a learned balancer's current ones: epochs stay comparable
        # for early stopping and checkpoint selection.
        # sync_dist: averaged over every process's rows at the epoch's end, so that all processes of a
        # distributed run monitor the same val/loss for early stopping and checkpoints.
        self.log(f"{stage}/loss", self.balancer.weighted_sum(losses), batch_size=len(batch), prog_bar=stage == "val",
                 sync_dist=True)
        self.log_dict({f"{stage}/{task}/loss": loss for task, loss in losses.items()}, batch_size=len(batch),
                      sync_dist=True)
        for task, head in self.model.heads.items():
            output, target, groups = self._labelled(task, outputs[task], batch)
            head.update_metrics(self.metrics[stage][task], output, target, groups)
            if self.scenarios:
                self._update_scenario_metrics(stage, task, batch, output, target, groups)
        return outputs

    def _update_scenario_metrics(self, stage: str, task: str, batch: Batch, output: Tensor, target: Tensor,
                                 groups: Tensor | None) -> None:
        scenario = batch.features[self.scenario_column]
        rows = batch.label_rows.get(task)
        if rows is not None:
            scenario = scenario[rows]
        for position, (_, scenario_id) in enumerate(self.scenarios):
            selected = scenario == scenario_id
            if selected.any():
                self.model.heads[task].update_metrics(self.scenario_metrics[stage][task][str(position)], output[selected],
                                                      target[selected], None if groups is None else groups[selected])

    def _log_metrics(self, stage: str) -> None:
        for task, metrics in self.metrics[stage].items():
            for name, metric in metrics.items():
                # torchmetrics has gathered every process's state already, so the mean over processes of
                # sync_dist is that same value; it keeps the value on every process for callbacks to monitor.
                self.log(f"{stage}/{task}/{name}", metric.compute(), sync_dist=True)
                metric.reset()
        # Per scenario: ``{stage}/{task}/{metric}/{scenario}``, for the scenarios the split shows.
        # Whether a scenario was seen is summed over processes, so that every process computes
        # (and synchronises) the same metrics even when its share of the split lacks a scenario.
        per_scenario = [(task, position, metrics) for task, by_position in self.scenario_metrics[stage].items()
                        for position, metrics in by_position.items()]
        seen = torch.tensor([float(any(m.update_count for m in metrics.values())) for _, _, metrics in per_scenario],
                            device=self.device)
        seen = self.trainer.strategy.reduce(seen, reduce_op="sum") if len(seen) else seen
        for (task, position, metrics), was_seen in zip(per_scenario, seen.tolist()):
            for name, metric in metrics.items():
                if was_seen:
                    self.log(f"{stage}/{task}/{name}/{self.scenarios[int(position)][0]}", metric.compute(),
                             sync_dist=True)
                metric.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        # The raw outputs per task go to the callbacks' on_test_batch_end (CalibrationWriter).
        return self._evaluation_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self.balancer.on_train_epoch_end()
        self._log_missing_rows("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self._log_missing_rows("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self._log_missing_rows("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        outputs = self(batch.features)
        return {"index": batch.index, **{task: head.predict(outputs[task]) for task, head in self.model.heads.items()}}

    def on_fit_start(self) -> None:
        costs = model_costs(self.model)
        if self.trainer.is_global_zero:
            print_costs(costs)
        warning = table_memory_warning(costs, self.hparams.embedding_budget_mib)
        if warning:
            rank_zero_warn(warning)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Content backbones with their own learning_rate get their own parameter group; frozen
        # parameters are left out. fused: one kernel over all parameters instead of ~6 per tensor.
        groups, grouped = [], set()
        for content in self.content_fields().values():
            encoder = content.encoder
            if encoder.trainable_backbone and encoder.learning_rate is not None:
                params = [p for p in encoder.backbone.parameters() if p.requires_grad]
                groups.append({"params": params, "lr": encoder.learning_rate})
                grouped.update(map(id, params))
        # Learned task weights: the balancer's learning rate (GradNorm and FAMO use ~0.025) and no
        # weight decay, which would pull log-variances and logits towards 0 against their objective.
        balancer = [p for p in self.balancer.parameters() if p.requires_grad]
        if balancer:
            groups.append({"params": balancer, "lr": self.balancer.learning_rate or self.hparams.learning_rate,
                           "weight_decay": 0.0})
            grouped.update(map(id, balancer))
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in grouped]
        return torch.optim.Adam([{"params": rest}, *groups], lr=self.hparams.learning_rate,
                                weight_decay=self.hparams.weight_decay, fused=True)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> "MultiTaskModule":
        """Lightning's loader, after checking that every component the checkpoint's manifest names is
        installed: a missing one fails naming the distribution to install, before anything is built."""
        require_installed_components(checkpoint_path, get_registry())
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fusionrec"] = {"version": fusionrec.__version__, "torch": str(torch.__version__),
                                   "components": self.component_manifest()}

    def component_manifest(self) -> dict[str, Any]:
        """Registry name -> providing plugin, distribution and version, for every component in use."""
        def entry(slot: str, name: str) -> dict[str, str]:
            return {"name": name, **self.registry.get(slot, name, slot).manifest_entry()}

        encoders = self.hparams.encoders or {}
        return {
            "encoders": {field: entry("encoders", encoders.get(field, {}).get("name", default_encoder(info["type"])))
                         for field, info in self.hparams.preprocessing["features"].items()},
            "fusion": entry("fusions", self.fusion_config["name"]),
            "trunk": entry("trunks", self.trunk_config["name"]),
            # A trunk built on another (scenario_towers' base) needs that one installed too.
            **({"trunk_base": entry("trunks", self.trunk_config["base"]["name"])}
               if isinstance(self.trunk_config.get("base"), dict) and "name" in self.trunk_config["base"] else {}),
            "heads": {task: entry("heads", spec.head) for task, spec in self.task_specs.items()},
            "balancer": entry("balancers", self.balancer_config["name"]),
        }


# Manifest section -> registry slot.
MANIFEST_SLOTS = {"encoders": "encoders", "fusion": "fusions", "trunk": "trunks", "trunk_base": "trunks", "heads": "heads",
                  "balancer": "balancers"}


def require_installed_components(checkpoint_path: str | Path, registry: Registry) -> None:
    """Every component in the checkpoint's manifest (``checkpoint["fusionrec"]["components"]``) must
    be registered; otherwise a ConfigError names it and the distribution that provided it."""
    if not Path(checkpoint_path).is_file():
        raise ConfigError(f"{checkpoint_path}: no such checkpoint file")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    manifest = checkpoint.get("fusionrec", {}).get("components", {})
    for section, slot in MANIFEST_SLOTS.items():
        entries = manifest.get(section, {})
        named = entries.items() if section in ("encoders", "heads") else [(None, entries)]
        for owner, entry in named:
            if entry and entry["name"] not in registry.components[slot]:
                where = f"{section}.{owner}" if owner else section
                raise ConfigError(
                    f"{checkpoint_path}: the model's {where} is the {slot[:-1]} '{entry['name']}' from "
                    f"{entry['distribution']} {entry['version']}, which no installed plugin provides; "
                    f"install {entry['distribution']}")
