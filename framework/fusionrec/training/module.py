"""The LightningModule: builds the multi-task model from its hyperparameters and trains it on the
balanced loss. Its other jobs live beside it: evaluation metrics (:mod:`.metrics`), the optimiser's
parameter groups (:mod:`.optimisation`), the checkpoint's component manifest (:mod:`.manifest`) and
the media fields' content caching (:mod:`.content`)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
import pandas as pd
from torch import Tensor

import fusionrec
from fusionrec.components import FieldEncoder
from fusionrec.components.options import NonNegativeFloat, PositiveFloat, PositiveInt
from fusionrec.data.batches import Batch, TensorTable
from fusionrec.data.graph import item_content
from fusionrec.data.history import positive_rows
from fusionrec.data.reading import require_columns
from fusionrec.data.preprocessing import RESERVED, Preprocessor
from fusionrec.data.schema import parse_tasks
from fusionrec.errors import ConfigError
from fusionrec.models.content import ContentField
from fusionrec.components.graph import GraphEncoder
from fusionrec.components.retrieval import RetrievalHead, RetrievalModel
from fusionrec.data.retrieval import RetrievalCatalogue
from fusionrec.models.multitask import MultiTaskModel, build_encoders, check_trunk
from fusionrec.plugins import check_options, get_registry
from fusionrec.training import content, manifest, optimisation
from fusionrec.training.cost import model_costs, print_costs, table_memory_warning
from fusionrec.training.metrics import EvaluationMetrics, MissingContent
from fusionrec.training.retrieval import RetrievalObjective, next_item_history

# The component each of these model arguments names when a config leaves it unset.
DEFAULT_COMPONENTS = {"fusion": "concat", "trunk": "shared_bottom", "balancer": "fixed", "retrieval": "two_tower"}
# model.retrieval's keys that are the module's (which columns name a row's user and item), not the model's.
RETRIEVAL_KEYS = {"user_key": "user_id", "item_key": "item_id"}


def vocabulary_size(encoder: Any) -> int:
    """A multi_categorical field's id count, the width of its multi-hot as graph content; 0 for others."""
    field = getattr(encoder, "field", None)
    return field.cardinality if field is not None and field.type == "multi_categorical" else 0


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
        retrieval: ``{name: two_tower, user_key, item_key, **options}``: train a retrieval model (user and
            item towers meeting in an inner product) on the ``retrieval`` task instead of the multi-task
            stack (then fusion and trunk are unused; the towers name their own). docs/retrieval.md.
        embedding_budget_mib: fit warns when the embedding tables' weights exceed it (fit prints
            every table's and encoder's parameters and memory at its start either way).
        preprocessing: the fitted vocabularies and statistics, which the data module owns and hands
            over in its setup (:meth:`use_preprocessing`); stored in every checkpoint, so a model
            loaded from one is built at once. Leave it unset in configs.
    """

    def __init__(self, tasks: dict[str, dict[str, Any]], embedding_dim: PositiveInt = 16,
                 encoders: dict[str, dict[str, Any]] | None = None, fusion: dict[str, Any] | None = None,
                 trunk: dict[str, Any] | None = None, balancer: dict[str, Any] | None = None,
                 retrieval: dict[str, Any] | None = None, learning_rate: PositiveFloat = 1e-3,
                 weight_decay: NonNegativeFloat = 0.0,
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
        self.retrieval_config = component_config("retrieval", retrieval) if retrieval is not None else None
        self._check_component_options()
        self.model: MultiTaskModel | RetrievalModel | None = None
        self.objective: RetrievalObjective | None = None  # the retrieval loss, once the data is known
        self.missing_content = MissingContent()
        if preprocessing is not None:
            self._build(preprocessing)

    def _check_component_options(self) -> None:
        """Every configured component's options against its factory's signature, before the data is
        read: the components are built once the data module hands over the fitted preprocessing,
        which gives their inputs.
        The skipped leading parameters are the ones the model passes (a trunk's input_dim, tasks...)."""
        registry = self.registry
        fusion = dict(self.fusion_config)
        registry.check("fusions", fusion.pop("name"), "model.fusion", fusion, skip=1)
        check_trunk(registry, self.trunk_config, "model.trunk")
        for field, override in (self.hparams.encoders or {}).items():
            key = f"model.encoders.{field}"
            options = {option: value for option, value in override.items() if option != "dim" or value is not None}
            if "name" in options:  # dim, when given, is checked as the encoder's second parameter
                registry.check("encoders", options.pop("name"), key, options, skip=1 if "dim" in options else 2)
            elif "dim" in options:  # the field's default encoder depends on its type, known from the data
                check_options(FieldEncoder, {"dim": options["dim"]}, key, skip=1)
        retrieval_heads = {name for name, spec in self.task_specs.items()
                           if issubclass(registry.get("heads", spec.head, f"model.tasks.{name}").factory, RetrievalHead)}
        if self.retrieval_config is None:
            if retrieval_heads:
                raise ConfigError(f"model.tasks.{min(retrieval_heads)}: the retrieval head trains a retrieval model; "
                                  f"set model.retrieval (its user and item towers), docs/retrieval.md")
            return
        options = self.retrieval_options()
        registry.check("retrieval_models", options.pop("name"), "model.retrieval", options, skip=2)
        if len(self.task_specs) != 1 or not retrieval_heads:
            raise ConfigError(f"model.tasks: a retrieval model (model.retrieval) trains one task with the retrieval "
                              f"head, whose label marks the positive rows; got {', '.join(self.task_specs)}")

    def retrieval_options(self) -> dict[str, Any]:
        """``model.retrieval`` without the module's keys: the retrieval model's name and options."""
        return {key: value for key, value in self.retrieval_config.items() if key not in RETRIEVAL_KEYS}

    def retrieval_key(self, key: str) -> str:
        """``model.retrieval.user_key`` or ``item_key``: the column naming a row's user or item."""
        return self.retrieval_config.get(key, RETRIEVAL_KEYS[key])

    def _build(self, preprocessing: dict[str, Any]) -> None:
        hp = self.hparams
        preprocessor = Preprocessor(preprocessing)
        tasks = {name: {"head": spec.head, "options": spec.options} for name, spec in self.task_specs.items()}
        missing = sorted(set(tasks) - set(preprocessing["tasks"]))
        if missing:
            raise ConfigError(f"model.tasks: task(s) {', '.join(missing)} have no fitted labels in the preprocessing")
        label_states = {name: preprocessing["tasks"][name]["labels"] for name in tasks}
        if self.retrieval_config is not None:
            self.model = self._build_retrieval(preprocessor, tasks, label_states)
        else:
            self.model = MultiTaskModel.build(
                self.registry, preprocessor.field_infos(), tasks, label_states, hp.embedding_dim,
                dict(hp.encoders or {}), self.fusion_config, self.trunk_config, preprocessing.get("scenario"))
        # With data.scenario, every task's metrics once more per scenario: (scenario name, its categorical id).
        self.scenario_column = preprocessing.get("scenario")
        vocabulary = preprocessing["features"][self.scenario_column]["vocabulary"] if self.scenario_column else []
        self.metrics = EvaluationMetrics(self.model.heads, [(name, position + RESERVED)
                                                            for position, name in enumerate(vocabulary)])

    def _build_retrieval(self, preprocessor: Preprocessor, tasks: dict[str, dict[str, Any]],
                         label_states: dict[str, dict]) -> RetrievalModel:
        """The retrieval model of ``model.retrieval``, its one task's head in its ``heads``."""
        if preprocessor.state.get("scenario"):
            raise ConfigError("data.scenario: a retrieval model (model.retrieval) has no scenario-aware towers; "
                              "put the scenario column among the user-side fields instead")
        options = self.retrieval_options()
        encoders, _ = build_encoders(self.registry, preprocessor.field_infos(), dict(self.hparams.encoders or {}),
                                     self.hparams.embedding_dim)
        model = self.registry.build("retrieval_models", options.pop("name"), "model.retrieval", encoders,
                                    self.registry, **options)
        for task, spec in tasks.items():
            model.heads[task] = self.registry.build("heads", spec["head"], f"model.tasks.{task}", model.output_dim,
                                                    label_states[task], **spec["options"])
        return model

    def use_splits(self, splits: dict[str, pd.DataFrame], tables: dict[str, TensorTable],
                   items: TensorTable | None = None) -> None:
        """The data module's split frames and tables, handed over in its setup: graph encoders take the
        training split's user-item edges and their items' content (:meth:`_use_graphs`), and a retrieval
        model's loss draws its candidates from the training split's items (:class:`RetrievalCatalogue`).
        ``items``: the table of ``data.catalogue``, if any."""
        graphs = [encoder for encoder in self.model.encoders.values()
                  if isinstance(encoder, GraphEncoder) and encoder.side == "user"]
        if (graphs or self.retrieval_config is not None) and "train" not in splits:
            key = "model.retrieval" if self.retrieval_config is not None else f"model.encoders.{graphs[0].field.name}"
            raise ConfigError(f"{key}: needs the training split in memory (its interactions or items); read it "
                              f"with data.path or data.train, not data.streaming")
        for encoder in graphs:
            self._use_graphs(encoder, splits["train"], tables["train"], items)
        if self.retrieval_config is None:
            return
        (task, head), = self.model.heads.items()
        sequences = None
        if head.next_item:  # each user's sequence in time order, cut into histories of the encoder's length
            history = next_item_history(self.model, task, head)
            built = self.hparams.preprocessing["features"][head.next_item].get("history") or {}
            sequences = (built.get("time"), history.length)
        catalogue = RetrievalCatalogue.build(splits, tables, task, self.retrieval_key("user_key"),
                                             self.retrieval_key("item_key"), self.model.item_fields, sequences)
        self.objective = RetrievalObjective(self.model, task, head, catalogue)

    def _use_graphs(self, user: GraphEncoder, train: pd.DataFrame, table: TensorTable,
                    items: TensorTable | None) -> None:
        """A graph's edges (the training split's positive rows) to its user-side encoder, and to its item-side
        encoder the item content it asks for, from the catalogue's rows first, then the training split's."""
        graph, key = user.graph, f"model.encoders.{user.field.name}.graph"
        if graph["positive"]:
            require_columns(train, {graph["positive"]["column"]: f"{key}.positive.column"})
        rows = torch.from_numpy(positive_rows(train, graph["positive"], f"{key}.positive"))
        user.use_interactions(table.features[graph["user"]][rows], table.features[graph["item"]][rows])
        item = self.model.encoders[graph["item"]]
        if item.content_fields():
            widths = {field: vocabulary_size(getattr(self.model.encoders, field, None))
                      for field in item.content_fields()}
            sources = [table] if items is None else [items, table]
            item.use_item_content(*item_content(sources, graph["item"], widths, item.field.cardinality,
                                                f"model.encoders.{graph['item']}"))

    def use_preprocessing(self, preprocessing: dict[str, Any]) -> None:
        """The data module's fitted preprocessing, handed over in its setup: kept in the hyperparameters,
        so that every checkpoint carries it, and the model built from it. A model built already (from a
        checkpoint's hyperparameters) keeps its own, which the data module took over."""
        if self.model is None:
            self.hparams["preprocessing"] = preprocessing
            self._build(preprocessing)

    def setup(self, stage: str) -> None:
        if self.model is None:
            raise ConfigError("model: no fitted preprocessing; train with a MultiTaskDataModule")

    def content_fields(self) -> dict[str, ContentField]:
        return self.model.content_fields()

    def attach_content_encoders(self, tables: dict) -> None:
        """Give every split's media columns what their batches need (:func:`.content.attach_content_encoders`)."""
        content.attach_content_encoders(self.content_fields(), tables)

    def _log_missing_rows(self, stage: str) -> None:
        for name, rows in self.missing_content.pop(stage).items():
            self.log(name, rows, reduce_fx="sum", sync_dist=True)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.model(features)

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

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        self.missing_content.count(batch, "train")
        if self.objective is not None:
            loss = self.objective(batch, "train")
            if loss is not None:  # None: no positive row in the batch, nothing to learn from
                self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
                self.log(f"train/{self.objective.task}/loss", loss, batch_size=len(batch))
            return loss
        losses = self._losses(self(batch.features), batch)
        total = self.balancer(losses, self.model.trunk.shared_parameters())
        self.log("train/loss", total, prog_bar=True, batch_size=len(batch))
        # The logger only writes every log_every_n_steps; logging per-task losses on the other steps
        # would cost ~1 ms a step for values nobody reads.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log_dict({f"train/{task}/loss": loss for task, loss in losses.items()}, batch_size=len(batch))
            self.log_dict({f"train/{task}/weight": weight for task, weight in self.balancer.task_weights().items()},
                          batch_size=len(batch))
        return total

    def _evaluation_step(self, batch: Batch, stage: str) -> dict[str, Tensor] | None:
        self.missing_content.count(batch, stage)
        if self.objective is not None:
            loss = self.objective(batch, stage)
            if loss is not None:
                self.log(f"{stage}/loss", loss, batch_size=len(batch), prog_bar=stage == "val", sync_dist=True)
                self.log(f"{stage}/{self.objective.task}/loss", loss, batch_size=len(batch), sync_dist=True)
            return None
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
            scenario = None
            if self.scenario_column is not None:
                rows = batch.label_rows.get(task)
                scenario = batch.features[self.scenario_column]
                scenario = scenario if rows is None else scenario[rows]
            self.metrics.update(stage, task, head, output, target, groups, scenario)
        return outputs

    def _log_metrics(self, stage: str) -> None:
        for name, value in self.metrics.compute(stage, partial(self.trainer.strategy.reduce, reduce_op="sum")).items():
            # torchmetrics has gathered every process's state already, so the mean over processes of
            # sync_dist is that same value; it keeps the value on every process for callbacks to monitor.
            self.log(name, value, sync_dist=True)

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
        return optimisation.adam(self, self.content_fields(), self.balancer, self.hparams.learning_rate,
                                 self.hparams.weight_decay)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> "MultiTaskModule":
        """Lightning's loader, after checking that every component the checkpoint's manifest names is
        installed: a missing one fails naming the distribution to install, before anything is built."""
        manifest.require_installed_components(checkpoint_path, get_registry())
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fusionrec"] = {"version": fusionrec.__version__, "torch": str(torch.__version__),
                                   "components": self.component_manifest()}

    def component_manifest(self) -> dict[str, Any]:
        """Registry name -> providing plugin, distribution and version, for every component in use."""
        return manifest.component_manifest(
            self.registry, self.hparams.preprocessing["features"], self.hparams.encoders or {}, self.fusion_config,
            self.trunk_config, {task: spec.head for task, spec in self.task_specs.items()}, self.balancer_config,
            self.retrieval_config)

