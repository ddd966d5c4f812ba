"""The Lightning data module: config -> tables -> fitted preprocessing -> columnar loaders."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from fusionrec.data.batches import BatchIndices, TensorTable, batch_loader
from fusionrec.data.negatives import ItemCatalogue, NegativeSampledTable, mark_positives, parse_negatives
from fusionrec.data.preprocessing import Preprocessor
from fusionrec.data.reading import join_side_tables, read_table, require_columns, split_table
from fusionrec.data.schema import parse_features, parse_tasks
from fusionrec.data.synthetic import quickstart_log
from fusionrec.errors import ConfigError
from fusionrec.plugins import get_registry


class MultiTaskDataModule(LightningDataModule):
    """Rows from files (or the built-in generator) as batches of tensors.

    Args:
        features: ``{column: {type: categorical|numeric|multi_categorical|vector, **options}}``.
        tasks: the model's tasks (linked from ``model.tasks`` by the CLI), for their label columns.
        path: one file to split by ``split``; or give ``train`` (+ ``val``, ``test``) files.
        split: ``{method: random|time, ratios: [train, val, test], time_column, seed}``.
        joins: side tables left-joined onto every split: ``[{path, key}]``.
        generate: ``{rows, users, items, seed}`` for the synthetic quickstart log (instead of files).
        predict: file to score with ``fusionrec predict`` (default: the test split).
        scenario: the column naming each row's scenario; encoded like a categorical feature.
        group: the column naming each row's group (request, session) for ranking tasks: a group's
            rows stay together in a batch, and training shuffles groups, not rows.
        negatives: ``{task, user, item, per_positive, sampler, item_features}``: the log is
            positive-only, and each row gets ``per_positive`` sampled negatives for the ranking
            ``task`` (see :mod:`fusionrec.data.negatives`).
    """

    def __init__(self, features: dict[str, Any], tasks: dict[str, Any], path: str | None = None,
                 train: str | None = None, val: str | None = None, test: str | None = None,
                 predict: str | None = None, split: dict[str, Any] | None = None,
                 joins: list[dict[str, Any]] | None = None, generate: dict[str, Any] | None = None,
                 scenario: str | None = None, group: str | None = None,
                 negatives: dict[str, Any] | None = None, batch_size: int = 1024, eval_batch_size: int = 8192,
                 num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.registry = get_registry()
        self.feature_specs = parse_features({**features, **({scenario: {"type": "categorical"}}
                                                            if scenario and scenario not in features else {})})
        self.task_specs = parse_tasks(tasks, self.registry)
        if group and negatives:
            raise ConfigError("data: give data.group (groups in the data) or data.negatives (a group per "
                              "positive), not both")
        self.negative_spec = parse_negatives(negatives, self.task_specs, self.feature_specs) if negatives else None
        for name, spec in self.task_specs.items():
            # Ranking heads compare the rows of a group; without groups there is nothing to compare.
            ranking = getattr(self.registry.get("heads", spec.head, f"model.tasks.{name}.head").factory,
                              "needs_groups", False)
            if ranking and not group and not negatives:
                raise ConfigError(f"model.tasks.{name}: the {spec.head!r} head ranks the rows of a group; set "
                                  f"data.group (a request/session column) or data.negatives (sampled negatives)")
        sources = [name for name, value in (("path", path), ("train", train), ("generate", generate)) if value]
        if len(sources) != 1:
            raise ConfigError(f"data: give exactly one of data.path (split by data.split), data.train "
                              f"(+ val/test) or data.generate; got {', '.join(sources) or 'none'}")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ConfigError(f"data.{key}: expected a positive number of rows, got {value}")
        self.preprocessor: Preprocessor | None = None
        self.splits: dict[str, pd.DataFrame] = {}
        self.tables: dict[str, TensorTable] = {}
        self.sampled: dict[str, Dataset] = {}  # the splits with their sampled negatives

    # --- reading ---

    def _read(self, path: str, key: str) -> pd.DataFrame:
        frame = read_table(path, key)
        return join_side_tables(frame, self.hparams.joins or [], "data.joins")

    def _load_splits(self) -> dict[str, pd.DataFrame]:
        hp = self.hparams
        if hp.train:
            splits = {name: self._read(getattr(hp, name), f"data.{name}")
                      for name in ("train", "val", "test") if getattr(hp, name)}
        else:
            path = hp.path
            split = dict(hp.split or {})
            if hp.generate:
                path = str(quickstart_log(**hp.generate))
                split.setdefault("method", "time")
                split.setdefault("time_column", "timestamp")
            if not split:
                raise ConfigError("data.split: required with data.path, e.g. {method: random, ratios: [0.8, 0.1, 0.1]}")
            unknown = set(split) - {"method", "ratios", "time_column", "seed"}
            if unknown:
                raise ConfigError(f"data.split: unknown key(s) {', '.join(sorted(unknown))}; "
                                  f"accepted: method, ratios, time_column, seed")
            frame = self._read(path, "data.generate" if hp.generate else "data.path")
            parts = split_table(frame, split.get("method", "random"), split.get("ratios", (0.8, 0.1, 0.1)),
                                "data.split", split.get("time_column"), split.get("seed", 0))
            splits = {name: part for name, part in zip(("train", "val", "test"), parts) if len(part)}
        if hp.predict:
            splits["predict"] = self._read(hp.predict, "data.predict")
        negatives = self.negative_spec
        for name, frame in splits.items():
            needed = {column: f"data.features.{column}" for column in self.feature_specs}
            if name != "predict":
                if hp.group:
                    needed[hp.group] = "data.group"
                if negatives:
                    needed.update({negatives.user: "data.negatives.user", negatives.item: "data.negatives.item"})
                    require_columns(frame, needed)
                    frame = splits[name] = mark_positives(frame, self.task_specs[negatives.task].label, negatives)
                needed.update({task.label: f"model.tasks.{task.name}.label" for task in self.task_specs.values()})
            require_columns(frame, needed)
        return splits

    def _grouped(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, torch.Tensor]:
        """The rows reordered so that each group's rows are contiguous (groups in order of first
        appearance, rows in file order within a group), and each row's group number."""
        codes = pd.factorize(frame[self.hparams.group])[0]
        order = np.argsort(codes, kind="stable")
        return frame.iloc[order].reset_index(drop=True), torch.from_numpy(codes[order].astype(np.int64))

    # --- Lightning hooks ---

    def setup(self, stage: str) -> None:
        if self.tables:
            return
        self.splits = self._load_splits()
        if self.preprocessor is None:
            # A model restored from a checkpoint brings the vocabularies it was trained with.
            model = self.trainer.lightning_module if self.trainer is not None else None
            fitted = getattr(model, "hparams", {}).get("preprocessing") if model is not None else None
            self.preprocessor = Preprocessor(fitted) if fitted else Preprocessor.fit(
                self.splits["train"], self.feature_specs, self.task_specs, self.registry, self.hparams.scenario)
        groups = {}
        if self.hparams.group:
            for name in self.splits.keys() - {"predict"}:
                self.splits[name], groups[name] = self._grouped(self.splits[name])
        self.tables = {name: self.preprocessor.transform(frame, self.registry, with_labels=name != "predict")
                       for name, frame in self.splits.items()}
        for name, split_groups in groups.items():
            self.tables[name].groups = split_groups
        self.sampled = self._with_negatives() if self.negative_spec else {}

    def _with_negatives(self) -> dict[str, Dataset]:
        """Each labelled split's table with its negatives: drawn per batch for training, once for val/test."""
        spec = self.negative_spec
        catalogue = ItemCatalogue(self.splits["train"], spec)
        train = self.tables["train"]
        item_features = {name: train.features[name].index_select(0, catalogue.first_rows) for name in spec.item_features}
        sampled = {}
        for name in self.tables.keys() - {"predict"}:
            negatives = catalogue.for_split(self.splits[name], is_train=name == "train")
            make = NegativeSampledTable if name == "train" else NegativeSampledTable.drawn_once
            sampled[name] = make(self.tables[name], negatives, item_features, spec.task)
        return sampled

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if split in self.sampled:
            # Batches of positives, each with its negatives: about batch_size rows in all.
            positives = max(1, batch_size // (self.negative_spec.per_positive + 1))
            table = self.sampled[split]
            return batch_loader(table, batch_size, shuffle, self.hparams.num_workers,
                                BatchIndices(len(table), positives, shuffle))
        return batch_loader(self.tables[split], batch_size, shuffle, self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, True)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        # The rows as given, never with sampled negatives: one score per row of predict_frame().
        split = "predict" if "predict" in self.tables else "test"
        return batch_loader(self.tables[split], self.hparams.eval_batch_size, False, self.hparams.num_workers)

    def predict_frame(self) -> pd.DataFrame:
        return self.splits["predict" if "predict" in self.splits else "test"]

    def _eval_loader(self, split: str) -> DataLoader | list:
        if split not in self.tables:
            return []
        return self._loader(split, self.hparams.eval_batch_size, False)

    def use_checkpoint(self, path: str) -> None:
        """Take the fitted preprocessing of a checkpoint instead of refitting on the training split,
        so test, predict and resumed runs see the vocabularies the model was trained with."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        self.preprocessor = Preprocessor(checkpoint["hyper_parameters"]["preprocessing"])
