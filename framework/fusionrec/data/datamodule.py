"""The Lightning data module: config -> tables -> fitted preprocessing -> columnar loaders."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from fusionrec.components.options import NonNegativeFloat, NonNegativeInt, PositiveInt
from fusionrec.data.batches import TensorTable, batch_loader
from fusionrec.data.history import build_histories, history_columns
from fusionrec.data.keyed import Side, read_side, transform_side
from fusionrec.data.negatives import ItemCatalogue, NegativeSampledTable, mark_positives, parse_negatives
from fusionrec.data.preprocessing import Preprocessor
from fusionrec.data.reading import join_side_tables, read_table, require_columns, split_table
from fusionrec.data.schema import parse_features, parse_tasks
from fusionrec.data.streaming import ParquetShards, StreamingDataset, StreamingLoader, fit_streaming, parse_streaming
from fusionrec.data.synthetic import quickstart_log
from fusionrec.errors import ConfigError, DataError
from fusionrec.plugins import check_options, get_registry
from fusionrec.training.checkpoint import read_checkpoint
from fusionrec.training.module import MultiTaskModule

SPLITS = ("train", "val", "test")


def split_options(method: Literal["random", "time"] = "random",
                  ratios: list[NonNegativeFloat] = (0.8, 0.1, 0.1), time_column: str | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """The keys of ``data.split``, their types (checked by :func:`check_options`) and defaults:
    ``split_options(**split)`` is the split with every key."""
    return {"method": method, "ratios": ratios, "time_column": time_column, "seed": seed}


class MultiTaskDataModule(LightningDataModule):
    """Rows from files (or the built-in generator) as batches of tensors.

    Args:
        features: ``{column: {type: categorical|numeric|multi_categorical|vector, **options}}``.
        tasks: the model's tasks (linked from ``model.tasks`` by the CLI), for their label columns.
        path: one file to split by ``split``; or give ``train`` (+ ``val``, ``test``) files.
        split: ``{method: random|time, ratios: [train, val, test], time_column, seed}``.
        joins: side tables left-joined onto every split: ``[{path, key}]``.
        catalogue: ``{path, key}``, the item catalogue: one row per item (``key``, its id column) with
            item features as columns. Its items count in those features' vocabularies, so an item
            without training rows gets its own id instead of the out-of-vocabulary one, and graph
            encoders read their content from it (docs/graph-encoders.md).
        generate: ``{rows, users, items, seed}`` for the synthetic quickstart log (instead of files).
        streaming: ``{train, val, test, shuffle_buffer, fit_rows}``: read Parquet shards (paths, globs
            or fsspec URLs) a row group at a time instead of loading the splits (docs/streaming.md).
        predict: file to score with ``fusionrec predict`` (default: the test split).
        scenario: the column naming each row's scenario; encoded like a categorical feature.
        group: the column naming each row's group (request, session) for ranking tasks: a group's
            rows stay together in a batch, and training shuffles groups, not rows.
        negatives: ``{task, user, item, per_positive, sampler, item_features}``: the log is
            positive-only, and each row gets ``per_positive`` sampled negatives for the ranking
            ``task`` (see :mod:`fusionrec.data.negatives`).
        shuffle_seed: training shuffles draw one permutation per epoch from ``shuffle_seed + epoch``
            (the same in every process, and after a resume); by default from torch's global generator
            (``seed_everything``), or in a distributed run from rank 0's seed.
    """

    def __init__(self, features: dict[str, Any], tasks: dict[str, Any], path: str | None = None,
                 train: str | None = None, val: str | None = None, test: str | None = None,
                 predict: str | None = None, split: dict[str, Any] | None = None,
                 joins: list[dict[str, Any]] | None = None, catalogue: dict[str, str] | None = None,
                 generate: dict[str, Any] | None = None,
                 streaming: dict[str, Any] | None = None, scenario: str | None = None, group: str | None = None,
                 negatives: dict[str, Any] | None = None, batch_size: PositiveInt = 1024,
                 eval_batch_size: PositiveInt = 8192, num_workers: NonNegativeInt = 0, shuffle_seed: int | None = None):
        super().__init__()
        # LightningCLI passes jsonargparse's int subclasses; checkpoints hold plain numbers.
        batch_size, eval_batch_size, num_workers = int(batch_size), int(eval_batch_size), int(num_workers)
        self.save_hyperparameters()
        self.registry = get_registry()
        self.feature_specs = parse_features({**features, **({scenario: {"type": "categorical"}}
                                                            if scenario and scenario not in features else {})})
        self.task_specs = parse_tasks(tasks, self.registry)
        # Features built from the log (histories) instead of read from a column of their name.
        self.built = {name: kind for name, spec in self.feature_specs.items()
                      if (kind := spec.feature_type(name, spec.options)).built}
        if group and negatives:
            raise ConfigError("data: give data.group (groups in the data) or data.negatives (a group per "
                              "positive), not both")
        self.negative_spec = parse_negatives(negatives, self.task_specs, self.feature_specs) if negatives else None
        for name, spec in self.task_specs.items():
            # Ranking heads compare the rows of a group; without groups there is nothing to compare.
            ranking = self.registry.get("heads", spec.head, f"model.tasks.{name}.head").factory.needs_groups
            if ranking and not group and not negatives:
                raise ConfigError(f"model.tasks.{name}: the {spec.head!r} head ranks the rows of a group; set "
                                  f"data.group (a request/session column) or data.negatives (sampled negatives)")
        sources = [name for name, value in (("path", path), ("train", train), ("generate", generate),
                                            ("streaming", streaming)) if value]
        if len(sources) != 1:
            raise ConfigError(f"data: give exactly one of data.path (split by data.split), data.train "
                              f"(+ val/test), data.generate or data.streaming; got {', '.join(sources) or 'none'}")
        if scenario and self.feature_specs[scenario].options.get("hash_buckets") is not None:
            raise ConfigError(f"data.features.{scenario}.hash_buckets: the scenario column needs a vocabulary "
                              f"(per-scenario metrics name each scenario); remove hash_buckets")
        self.streaming = parse_streaming(streaming) if streaming else None
        if self.streaming:
            self._check_streaming()
        if split:
            unknown = set(split) - {"method", "ratios", "time_column", "seed"}
            if unknown:
                raise ConfigError(f"data.split: unknown key(s) {', '.join(sorted(unknown))}; "
                                  f"accepted: method, ratios, time_column, seed")
            check_options(split_options, split, "data.split")
        if catalogue is not None and (not isinstance(catalogue, dict) or set(catalogue) != {"path", "key"}
                                      or not all(isinstance(value, str) for value in catalogue.values())):
            raise ConfigError(f"data.catalogue: expected {{path: <items table>, key: <its item id column>}}, "
                              f"got {catalogue!r}")
        self.catalogue: Side | None = None  # the items of data.catalogue, with their features
        self.preprocessor: Preprocessor | None = None
        self.splits: dict[str, pd.DataFrame] = {}
        self.tables: dict[str, TensorTable] = {}  # or StreamingDataset, with data.streaming
        self.shards: dict[str, ParquetShards] = {}  # the streamed splits' files
        self.sampled: dict[str, Dataset] = {}  # the splits with their sampled negatives

    # --- reading ---

    def _read(self, path: str, key: str) -> pd.DataFrame:
        frame = read_table(path, key)
        return join_side_tables(frame, self.hparams.joins or [], "data.joins")

    def _load_splits(self) -> dict[str, pd.DataFrame]:
        hp = self.hparams
        if hp.train:
            splits = {name: self._read(getattr(hp, name), f"data.{name}")
                      for name in SPLITS if getattr(hp, name)}
        else:
            path = hp.path
            split = dict(hp.split or {})
            if hp.generate:
                path = str(quickstart_log(**hp.generate))
                split.setdefault("method", "time")
                split.setdefault("time_column", "timestamp")
            if not split:
                raise ConfigError("data.split: required with data.path, e.g. {method: random, ratios: [0.8, 0.1, 0.1]}")
            frame = self._read(path, "data.generate" if hp.generate else "data.path")
            split = split_options(**split)
            ratios = split["ratios"]
            parts = split_table(frame, split["method"], ratios, "data.split", split["time_column"], split["seed"])
            # A ratio of 0 leaves a split out on purpose; one that rounds to no rows would leave it out
            # silently (no validation metrics, nothing to stop early on).
            for name, part, ratio in zip(SPLITS, parts, ratios):
                if ratio > 0 and not len(part):
                    raise DataError(f"data.split: the {name} split of {frame.attrs.get('source')} has no rows "
                                    f"({ratio} of {len(frame)} rows); give it a larger ratio or use more rows")
            splits = {name: part for name, part in zip(SPLITS, parts) if len(part)}
        if hp.predict:
            splits["predict"] = self._read(hp.predict, "data.predict")
        negatives = self.negative_spec
        for name, frame in splits.items():
            needed = {column: f"data.features.{column}" for column in self.feature_specs if column not in self.built}
            for feature, kind in self.built.items():  # a predict file's rows are scored, not events
                needed.update(history_columns(kind, f"data.features.{feature}", events=name != "predict"))
                if feature in frame.columns:
                    raise DataError(f"data.features.{feature}.history: the feature is built from the log, but "
                                    f"{frame.attrs.get('source')} has a column '{feature}' too; rename the feature, "
                                    f"or drop history to read the column")
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

    # --- streaming (data.streaming) ---

    def _check_streaming(self) -> None:
        """Streamed rows are encoded a batch at a time, so nothing may need a whole split at once."""
        needs_whole_split = {"joins": "side tables are joined in memory", "group": "groups are gathered from the "
                             "whole split", "negatives": "negatives are drawn from the whole log's items",
                             "predict": "predictions are written next to the rows, held in memory"}
        for key, reason in needs_whole_split.items():
            if getattr(self.hparams, key):
                raise ConfigError(f"data.{key}: not available with data.streaming ({reason}); load the data in "
                                  f"memory with data.path or data.train instead")
        if self.built:
            raise ConfigError(f"data.features.{next(iter(self.built))}.history: not available with data.streaming "
                              f"(a history is built from the whole log in time order); load the data in memory "
                              f"with data.path or data.train, or read the sequence from a column")
        media = [name for name, spec in self.feature_specs.items() if spec.feature_type.content]
        if media:
            raise ConfigError(f"data.features.{media[0]}: {self.feature_specs[media[0]].type} fields are not "
                              f"available with data.streaming (their items are encoded once per split)")

    def _shards(self) -> dict[str, ParquetShards]:
        """Each streamed split's files, every one checked for the columns the config names."""
        needed = {column: f"data.features.{column}" for column in self.feature_specs}
        needed.update({task.label: f"model.tasks.{task.name}.label" for task in self.task_specs.values()})
        shards = {}
        for name, sources in self.streaming.splits.items():
            shards[name] = ParquetShards(sources, f"data.streaming.{name}")
            shards[name].require_columns(needed)
        return shards

    def _streaming_datasets(self, shards: dict[str, ParquetShards]) -> dict[str, StreamingDataset]:
        hp = self.hparams
        world_size, rank, seed = self._processes() or (
            1, 0, torch.initial_seed() if hp.shuffle_seed is None else hp.shuffle_seed)
        columns = list(dict.fromkeys([*self.feature_specs, *(task.label for task in self.task_specs.values())]))
        return {name: StreamingDataset(split, self.preprocessor, columns,
                                       hp.batch_size if name == "train" else hp.eval_batch_size,
                                       training=name == "train", shuffle_buffer=self.streaming.shuffle_buffer,
                                       seed=seed, rank=rank, world_size=world_size, num_workers=hp.num_workers)
                for name, split in shards.items()}

    # --- Lightning hooks ---

    def setup(self, stage: str) -> None:
        self._load()
        # The model is built from the fitted preprocessing, and its content encoders decide what the
        # media columns carry; Lightning sets up the data module before the model.
        model = self.trainer.lightning_module if self.trainer is not None else None
        if isinstance(model, MultiTaskModule):
            model.use_preprocessing(self.preprocessor.state)
            items = self.catalogue.table if self.catalogue is not None else None
            model.attach_content_encoders({**self.tables, **({"catalogue": items} if items is not None else {})})
            model.use_splits(self.splits, self.tables, items)

    def _load(self) -> None:
        if self.tables:
            return
        # Streamed splits are never loaded: their shards are listed, and read batch by batch.
        self.shards = self._shards() if self.streaming else {}
        self.splits = {} if self.streaming else self._load_splits()
        if self.hparams.catalogue:
            self.catalogue = self._read_catalogue()
        if self.preprocessor is None:
            # A model restored from a checkpoint brings the vocabularies it was trained with.
            model = self.trainer.lightning_module if self.trainer is not None else None
            fitted = model.hparams.preprocessing if isinstance(model, MultiTaskModule) else None
            self.preprocessor = Preprocessor(fitted) if fitted else self._fit_preprocessing()
        if self.catalogue is not None:
            transform_side(self.catalogue, self.preprocessor.state)
        if self.streaming:
            self.tables = self._streaming_datasets(self.shards)  # the splits' datasets, as iterables
            return
        groups = {}
        if self.hparams.group:
            for name in self.splits.keys() - {"predict"}:
                self.splits[name], groups[name] = self._grouped(self.splits[name])
        self.tables = {name: self.preprocessor.transform(frame, self.registry, with_labels=name != "predict")
                       for name, frame in self.splits.items()}
        for name, split_groups in groups.items():
            self.tables[name].groups = split_groups
        for feature, kind in self.preprocessor.types.items():
            if kind.built:  # from every split at once: a row's history holds earlier events of any split
                for name, column in build_histories(self.splits, kind, f"data.features.{feature}").items():
                    self.tables[name].lazy[feature] = column
        self.sampled = self._with_negatives() if self.negative_spec else {}

    def _read_catalogue(self) -> Side:
        """data.catalogue's table, its key distinct, with the features it holds as columns."""
        path, key = self.hparams.catalogue["path"], self.hparams.catalogue["key"]
        side = read_side(path, key, "data.catalogue")
        side.fields = [name for name in self.feature_specs if name in side.frame.columns and name not in self.built]
        if not side.fields:
            raise DataError(f"data.catalogue: {path} has none of the features (data.features) as a column; its "
                            f"columns: {', '.join(map(str, side.frame.columns))}")
        return side

    def _fit_preprocessing(self) -> Preprocessor:
        """Vocabularies and statistics of the training split, fitted once: in a distributed run by
        rank 0 alone, which sends the fitted state to the other processes."""
        trainer = self.trainer
        distributed = trainer is not None and trainer.world_size > 1
        fitted = None
        if not distributed or trainer.global_rank == 0:
            items = self.catalogue.frame[self.catalogue.fields] if self.catalogue is not None else None
            fitted = (fit_streaming(self.shards["train"], self.feature_specs, self.task_specs, self.registry,
                                    self.hparams.scenario, self.streaming.fit_rows, items) if self.streaming else
                      Preprocessor.fit(self.splits["train"], self.feature_specs, self.task_specs, self.registry,
                                       self.hparams.scenario, items))
        if not distributed:
            return fitted  # its feature types are built already: no second build of every vocabulary
        state = trainer.strategy.broadcast(fitted.state if fitted is not None else None)
        return fitted if fitted is not None else Preprocessor(state)

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
        if self.streaming:  # batch size and shuffling were set when the split's dataset was made
            return StreamingLoader(self.tables[split], self.hparams.num_workers,
                                   lambda: self.trainer.current_epoch if self.trainer is not None else 0)
        table = self.tables[split]
        if split in self.sampled:
            table = self.sampled[split]
            # Batches of positives, each with its negatives: about batch_size rows in all.
            batch_size = max(1, batch_size // (self.negative_spec.per_positive + 1))
        processes = self._processes()
        if processes is None:
            return batch_loader(table, batch_size, shuffle, self.hparams.num_workers, self.hparams.shuffle_seed)
        world_size, rank, seed = processes
        return batch_loader(table, batch_size, shuffle, self.hparams.num_workers, seed, (world_size, rank))

    def _processes(self) -> tuple[int, int, int] | None:
        """``(world_size, rank, seed)`` under a distributed trainer, else None. Every process must draw
        the same permutations: the seed is data.shuffle_seed or, without it, rank 0's initial seed."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return None
        seed = self.hparams.shuffle_seed
        return trainer.world_size, trainer.global_rank, seed if seed is not None else trainer.strategy.broadcast(
            torch.initial_seed())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, True)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        if self.streaming:
            raise ConfigError("data.streaming: fusionrec predict writes the scores next to the scored rows, held "
                              "in memory; score them with a config that reads them with data.path or data.train")
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
        checkpoint = read_checkpoint(path, "--ckpt_path")
        self.preprocessor = Preprocessor(checkpoint["hyper_parameters"]["preprocessing"])
