"""Top-K over a whole catalogue: item fields encoded once, then every (user, item) pair scored in
chunks of at most ``max_pairs`` rows.

Per block of users: their fields are encoded once (``[U_b, D_f]``), the catalogue's encodings
(``[I, D_f]``) are gathered per pair, and fusion, trunk and heads run on the ``U_b x I`` pairs. The
block's fused scores ``[U_b, I]`` (``U_b * I <= max_pairs`` unless one user alone exceeds it)
are masked where the user's history is excluded and cut to the top K.

Retrieve, then rank (:meth:`Ranker.rank_candidates`): each user has their own candidates (a
retrieval model's top N); only those ``U x N`` pairs are scored, the same way.

A history encoder that reads the candidate (DIN, SASRec read out by target attention) cannot be
encoded once per user: the history's ids ``[U_b, L, P]`` and the candidate's ids are gathered per
pair instead, and the model encodes it on each pair's rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fusionrec.data.batches import TensorTable
from fusionrec.data.keyed import Side
from fusionrec.serving.fused_score import FusedScore
from fusionrec.training.module import MultiTaskModule


IDS = "ids:"  # prefix of a column's raw input among a side's encodings (the scenario, per-pair inputs)


@dataclass
class TopK:
    """``items``: ``[U, K]`` item rows, best first, -1 where a user has fewer than K candidates;
    ``fused``: ``[U, K]``; ``served``: ``{task: [U, K]}`` (``[U, K, C]`` for multi-output tasks)."""

    items: np.ndarray
    fused: np.ndarray
    served: dict[str, np.ndarray]


class Ranker:
    """Scores users against a catalogue with a trained :class:`MultiTaskModule` (in eval mode)."""

    def __init__(self, module: MultiTaskModule, score: FusedScore, max_pairs: int = 65536):
        self.module, self.model, self.score, self.max_pairs = module, module.model, score, max_pairs
        raw = [self.model.scenario_field] if self.model.scenario_field is not None else []
        # Histories read with the candidate, and the candidate's fields they read: model inputs per pair.
        raw += [field for name, fields in self.model.targets.items() for field in (name, *fields)]
        self.raw_inputs = list(dict.fromkeys(raw))

    def _encode_rows(self, table: TensorTable, rows: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``table``'s fields on ``rows``, encoded: ``({field: [len(rows), D_f]}, {media field: Bool[len(rows)]})``.
        The raw inputs the model reads per pair (the scenario column's ids, histories read with the
        candidate and the candidate's ids) come along as ``"ids:<column>"``."""
        encoded, present = {}, {}
        for start in range(0, len(rows), self.max_pairs):
            features = table[rows[start:start + self.max_pairs]].features
            part, part_present = self.model.encode(features)
            part.update({IDS + name: features[name] for name in self.raw_inputs if name in features})
            for name, value in part.items():
                encoded.setdefault(name, []).append(value)
            for name, value in part_present.items():
                present.setdefault(name, []).append(value)
        return ({name: torch.cat(parts) for name, parts in encoded.items()},
                {name: torch.cat(parts) for name, parts in present.items()})

    @torch.no_grad()
    def rank(self, users: Side, items: Side, user_rows: np.ndarray, k: int,
             exclude: tuple[np.ndarray, np.ndarray] | None = None) -> TopK:
        """Top ``k`` items for each of ``user_rows`` (rows of ``users``). ``exclude``: ``(user rows
        [P], item rows [P])`` pairs never recommended."""
        self.module.eval()
        num_items, k = len(items.keys), min(k, len(items.keys))
        item_encoded, item_present = self._encode_rows(items.table, torch.arange(num_items))
        block = max(1, self.max_pairs // num_items)
        excluded_users, excluded_items = exclude if exclude is not None else (np.empty(0, int), np.empty(0, int))
        results: list[TopK] = []
        for start in range(0, len(user_rows), block):
            rows = torch.as_tensor(user_rows[start:start + block], dtype=torch.long)
            user_encoded, user_present = self._encode_rows(users.table, rows)
            pairs = torch.arange(len(rows) * num_items)
            fused, served = self._score_pairs(pairs // num_items, pairs % num_items, user_encoded, user_present,
                                              item_encoded, item_present)
            fused = fused.view(len(rows), num_items)
            served = {task: score.view(len(rows), num_items, *score.shape[1:]) for task, score in served.items()}
            # Excluded pairs of this block's users: -inf, then dropped from the top K below.
            position = np.full(len(users.keys), -1)
            position[rows.numpy()] = np.arange(len(rows))
            block_rows = position[excluded_users]
            mine = block_rows >= 0
            fused[torch.as_tensor(block_rows[mine]), torch.as_tensor(excluded_items[mine])] = -torch.inf
            results.append(self._top(fused, served, k, torch.arange(num_items)))
        return self._concatenate(results)

    @torch.no_grad()
    def rank_candidates(self, users: Side, items: Side, user_rows: np.ndarray, candidates: np.ndarray,
                        k: int) -> TopK:
        """Top ``k`` of each user's own candidates: ``candidates [U, N]`` item rows for each of
        ``user_rows`` (-1: no candidate), e.g. a retrieval model's top N; ``k`` is cut to N. Only those
        pairs are scored (the items among them encoded once), at most ``max_pairs`` at a time."""
        self.module.eval()
        k = min(k, candidates.shape[1])
        chosen_items, slots = np.unique(candidates, return_inverse=True)  # slots: [U, N] into chosen_items
        slots, present_slot = slots.reshape(candidates.shape), candidates >= 0
        # An empty slot (-1) encodes row 0 in its place: never scored, it keeps the rows aligned.
        item_encoded, item_present = self._encode_rows(items.table, torch.as_tensor(np.maximum(chosen_items, 0)))
        block = max(1, self.max_pairs // candidates.shape[1])
        results: list[TopK] = []
        for start in range(0, len(user_rows), block):
            rows = torch.as_tensor(user_rows[start:start + block], dtype=torch.long)
            user_encoded, user_present = self._encode_rows(users.table, rows)
            user, slot = np.nonzero(present_slot[start:start + block])  # the block's real candidates
            item = slots[start:start + block][user, slot]
            user, slot = torch.as_tensor(user), torch.as_tensor(slot)
            scored, served = self._score_pairs(user, torch.as_tensor(item), user_encoded, user_present,
                                               item_encoded, item_present)
            fused = torch.full((len(rows), candidates.shape[1]), -torch.inf).index_put_((user, slot), scored)
            served = {task: torch.zeros(len(rows), candidates.shape[1], *score.shape[1:]).index_put_((user, slot),
                                                                                                    score)
                      for task, score in served.items()}
            results.append(self._top(fused, served, k, torch.as_tensor(candidates[start:start + block])))
        return self._concatenate(results)

    @staticmethod
    def _top(fused: Tensor, served: dict[str, Tensor], k: int, columns: Tensor) -> TopK:
        """The top ``k`` of a block's fused ``[U_b, C]`` scores; ``columns``: the item row of each column
        (``[C]``, or ``[U_b, C]`` per user)."""
        top, chosen = fused.topk(k, dim=1)
        item_rows = columns[chosen] if columns.dim() == 1 else columns.gather(1, chosen)
        return TopK(torch.where(top > -torch.inf, item_rows, -1).numpy(), top.numpy(),
                    {task: score.gather(1, chosen if score.dim() == 2 else
                                        chosen.unsqueeze(2).expand(-1, -1, score.shape[2])).numpy()
                     for task, score in served.items()})

    def _concatenate(self, results: list[TopK]) -> TopK:
        return TopK(np.concatenate([r.items for r in results]), np.concatenate([r.fused for r in results]),
                    {task: np.concatenate([r.served[task] for r in results]) for task in self.model.heads})

    def _score_pairs(self, user: Tensor, item: Tensor, user_encoded: dict[str, Tensor],
                     user_present: dict[str, Tensor], item_encoded: dict[str, Tensor],
                     item_present: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Fused ``[P]`` and served ``{task: [P, ...]}`` scores of the pairs (``user[p]``, ``item[p]``),
        rows of the encodings, scored ``max_pairs`` at a time."""
        fused, served = [], {task: [] for task in self.model.heads}
        for start in range(0, max(len(user), 1), self.max_pairs):  # no pair: one empty chunk, empty scores
            chunk_users, chunk_items = user[start:start + self.max_pairs], item[start:start + self.max_pairs]
            encoded = {**{name: value.index_select(0, chunk_users) for name, value in user_encoded.items()},
                       **{name: value.index_select(0, chunk_items) for name, value in item_encoded.items()}}
            present = {**{name: value.index_select(0, chunk_users) for name, value in user_present.items()},
                       **{name: value.index_select(0, chunk_items) for name, value in item_present.items()}}
            features = {name.removeprefix(IDS): encoded.pop(name) for name in list(encoded) if name.startswith(IDS)}
            outputs = self.model(features, encoded, present)
            scores = {task: head.predict(outputs[task]) for task, head in self.model.heads.items()}
            fused.append(self.score(scores))
            for task, score in scores.items():
                served[task].append(score)
        return torch.cat(fused), {task: torch.cat(parts) for task, parts in served.items()}
