"""Negative sampling for positive-only logs: each positive row becomes a group of itself and
``per_positive`` rows that copy its user and context but show a sampled item.

The item table is the training split's items (their first row); a sampled item is never one the
user has a positive with, in the training split or in the split being sampled. ``uniform`` draws
every item equally, ``popularity`` in proportion to its number of training rows. Everything is
vectorised: rejection rounds over the whole batch, then an exact draw for the few rows left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fusionrec.data.batches import Batch, TensorTable
from fusionrec.data.preprocessing import column_values
from fusionrec.data.schema import FeatureSpec, TaskSpec
from fusionrec.errors import ConfigError, DataError
from fusionrec.features.values import distinct

KEY = "data.negatives"
SAMPLERS = ("uniform", "popularity")
OPTIONS = ("task", "user", "item", "per_positive", "sampler", "item_features")
REJECTION_ROUNDS = 8  # then the rows still on a known positive are drawn exactly
EVAL_SEED = 0  # val/test negatives: drawn once, the same every epoch and every run


@dataclass(frozen=True)
class NegativeSpec:
    """``data.negatives``: the ranking ``task`` they are for, the ``user`` and ``item`` id columns,
    ``per_positive`` negatives per positive, the ``sampler`` and the ``item_features`` (feature
    columns that travel with a sampled item; the rest are copied from the positive)."""

    task: str
    user: str
    item: str
    per_positive: int
    sampler: str
    item_features: tuple[str, ...]


def parse_negatives(config: Any, tasks: dict[str, TaskSpec], features: dict[str, FeatureSpec]) -> NegativeSpec:
    if not isinstance(config, Mapping):
        raise ConfigError(f"{KEY}: expected a mapping, got {type(config).__name__} {config!r}")
    config = dict(config)
    unknown = sorted(set(config) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{KEY}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(OPTIONS)}")
    for required in ("task", "user", "item"):
        if not config.get(required):
            raise ConfigError(f"{KEY}.{required}: required")
    if config["task"] not in tasks:
        raise ConfigError(f"{KEY}.task: {config['task']!r} is not a task in model.tasks ({', '.join(tasks)})")
    per_positive = config.get("per_positive", 4)
    if not isinstance(per_positive, int) or isinstance(per_positive, bool) or per_positive < 1:
        raise ConfigError(f"{KEY}.per_positive: expected an integer >= 1, got {per_positive!r}")
    sampler = config.get("sampler", "uniform")
    if sampler not in SAMPLERS:
        raise ConfigError(f"{KEY}.sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    item_features = tuple(config.get("item_features") or ([config["item"]] if config["item"] in features else []))
    for column in item_features:
        if column not in features:
            raise ConfigError(f"{KEY}.item_features: {column!r} is not a column of data.features")
    media = [name for name, spec in features.items() if spec.feature_type.content]
    if media:
        raise ConfigError(f"{KEY}: media features ({', '.join(media)}) cannot be combined with sampled "
                          f"negatives yet; drop them or the negatives")
    return NegativeSpec(config["task"], config["user"], config["item"], per_positive, sampler, item_features)


def mark_positives(frame: pd.DataFrame, label: str, spec: NegativeSpec) -> pd.DataFrame:
    """Every row of a positive-only log is a positive of the ranking task: its label column is
    added as a constant 1 when the file has none, and must hold only 1 when it has one."""
    if label not in frame:
        return frame.assign(**{label: 1.0})
    values = pd.to_numeric(frame[label], errors="coerce")
    if not values.eq(1).all():
        raise DataError(f"{frame.attrs.get('source', 'data')}, column '{label}': with {KEY} every row is a "
                        f"positive of task '{spec.task}', so its label must be 1 (or the column absent); "
                        f"{int((~values.eq(1)).sum())} row(s) are not")
    return frame


def _ids(values: pd.Series) -> np.ndarray:
    """Ids as the feature types read them (their tokens: 7, 7.0 and '7' are one id), None where missing."""
    codes, tokens = distinct(column_values(values))
    return np.array([*tokens, None], dtype=object)[codes]


class ItemCatalogue:
    """The training split's items: ``first_rows`` ``[I]`` (their first training row) and
    ``weights`` ``[I]`` (the sampler's unnormalised probabilities)."""

    def __init__(self, train: pd.DataFrame, spec: NegativeSpec):
        codes, items = pd.factorize(_ids(train[spec.item]))
        self.items = pd.Index(items)
        self.first_rows = torch.from_numpy(np.unique(codes, return_index=True)[1])
        counts = np.bincount(codes, minlength=len(items)).astype(np.float64)
        self.weights = torch.from_numpy(counts if spec.sampler == "popularity" else np.ones_like(counts))
        self.spec, self.train = spec, train

    def __len__(self) -> int:
        return len(self.items)

    def for_split(self, frame: pd.DataFrame, is_train: bool) -> "SplitNegatives":
        """A sampler for the rows of ``frame``, excluding each user's positives in it and in training."""
        spec = self.spec
        known = frame if is_train else pd.concat([self.train[[spec.user, spec.item]], frame[[spec.user, spec.item]]])
        users, user_names = pd.factorize(_ids(known[spec.user]))
        items = self.items.get_indexer(_ids(known[spec.item]))
        present = items >= 0  # an item never seen in training is never sampled, so never in the way
        keys = np.unique(users[present].astype(np.int64) * len(self) + items[present])
        row_users = users[len(known) - len(frame):]  # the frame's rows come last in ``known``
        per_user = np.bincount(keys // len(self), minlength=len(user_names))
        full = np.unique(row_users[per_user[row_users] >= len(self)])
        if len(full):
            raise DataError(f"{frame.attrs.get('source', 'data')}, column '{spec.user}' ({KEY}.user): user "
                            f"{user_names[full[0]]!r} has a positive with every item of the training split, "
                            f"so no negative is left to sample ({len(full)} such user(s))")
        return SplitNegatives(torch.from_numpy(row_users.astype(np.int64)), torch.from_numpy(keys),
                              self.weights, spec.per_positive, spec.sampler == "uniform")


class SplitNegatives:
    """Draws ``per_positive`` items per row of one split. ``users``: ``[N]`` user number of each row;
    ``known``: sorted ``user * I + item`` keys of the users' positives; ``weights``: ``[I]``."""

    def __init__(self, users: Tensor, known: Tensor, weights: Tensor, per_positive: int, uniform: bool):
        self.users, self.known, self.weights, self.per_positive = users, known, weights, per_positive
        self.uniform = uniform  # randint: much cheaper than multinomial over equal weights

    def _candidates(self, count: int, generator: torch.Generator | None) -> Tensor:
        if self.uniform:
            return torch.randint(len(self.weights), (count,), generator=generator)
        return torch.multinomial(self.weights, count, replacement=True, generator=generator)

    def _is_known(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users * len(self.weights) + items
        position = torch.searchsorted(self.known, keys).clamp(max=len(self.known) - 1)
        return self.known[position] == keys

    def draw(self, rows: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[b]`` row numbers -> ``[b, per_positive]`` item numbers (of the catalogue)."""
        users = self.users.index_select(0, rows).repeat_interleave(self.per_positive)
        items = self._candidates(len(users), generator)
        for _ in range(REJECTION_ROUNDS):
            redraw = self._is_known(users, items)
            if not redraw.any():
                break
            items[redraw] = self._candidates(int(redraw.sum()), generator)
        redraw = self._is_known(users, items)
        if redraw.any():
            items[redraw] = self._exact(users[redraw], generator)
        return items.view(len(rows), self.per_positive)

    def _exact(self, users: Tensor, generator: torch.Generator | None) -> Tensor:
        """One draw per user from the sampler's weights with the user's positives zeroed:
        ``[r, I]`` weights, for the few rows rejection sampling left."""
        num_items = len(self.weights)
        start = torch.searchsorted(self.known, users * num_items)
        count = torch.searchsorted(self.known, (users + 1) * num_items) - start
        row = torch.repeat_interleave(torch.arange(len(users)), count)
        offset = torch.arange(int(count.sum())) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        weights = self.weights.expand(len(users), num_items).clone()
        weights[row, self.known[torch.repeat_interleave(start, count) + offset] % num_items] = 0
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)


class NegativeSampledTable(Dataset):
    """A split of positives, indexed by the positives of a batch (``[b]`` row numbers), returning
    a ``Batch`` of ``b * (1 + per_positive)`` rows: each positive then its negatives, one group
    per positive (its row number). The ranking task's label is 0 on the negatives; every other
    task is labelled only on the positives (``Batch.label_rows``).

    ``fixed``: ``[N, per_positive]`` negatives drawn once (val/test); None draws fresh ones for
    every batch from torch's global generator (training), so ``seed_everything`` reproduces them.
    """

    def __init__(self, table: TensorTable, negatives: SplitNegatives, item_features: dict[str, Tensor],
                 task: str, fixed: Tensor | None = None):
        self.table, self.negatives, self.item_features, self.task = table, negatives, item_features, task
        self.fixed = fixed

    @classmethod
    def drawn_once(cls, table: TensorTable, negatives: SplitNegatives, item_features: dict[str, Tensor],
                   task: str) -> "NegativeSampledTable":
        generator = torch.Generator().manual_seed(EVAL_SEED)
        return cls(table, negatives, item_features, task, negatives.draw(torch.arange(len(table)), generator))

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, rows: Tensor) -> Batch:
        index = torch.as_tensor(rows, dtype=torch.long)
        positives = self.table[index]
        items = self.fixed.index_select(0, index) if self.fixed is not None else self.negatives.draw(index)
        size, per_positive = items.shape
        group = per_positive + 1

        def with_negatives(positive: Tensor, negative: Tensor) -> Tensor:
            return torch.cat([positive.unsqueeze(1), negative.view(size, per_positive, *positive.shape[1:])], 1).flatten(0, 1)

        features = {}
        for name, values in positives.features.items():
            if name in self.item_features:
                features[name] = with_negatives(values, self.item_features[name].index_select(0, items.flatten()))
            else:
                features[name] = values.repeat_interleave(group, 0)
        labels = {name: values.repeat_interleave(group, 0) for name, values in positives.labels.items()}
        labels[self.task] = with_negatives(positives.labels[self.task],
                                           torch.zeros(size * per_positive, dtype=positives.labels[self.task].dtype))
        original = torch.arange(size * group) % group == 0
        index = index.repeat_interleave(group)
        return Batch(features, labels, index, index, {name: original for name in labels if name != self.task})
