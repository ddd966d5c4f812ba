"""Top-K from a retrieval checkpoint's towers: item vectors computed once per catalogue, user vectors
per block of users, then exact (blocked matrix multiply) or approximate (faiss) inner-product search
(:mod:`fusionrec.recommend.vectors`).

Unlike the ranking model's pair scoring, no network runs per (user, item) pair: the model's score is
``<u, v> / temperature``, so ranking the catalogue is a search over the item vectors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fusionrec.components.retrieval import RetrievalModel
from fusionrec.errors import DataError
from fusionrec.data.keyed import Side, transform_side
from fusionrec.recommend.vectors import ApproximateIndex, exact_topk, recall_against
from fusionrec.training.module import MultiTaskModule


def has_towers(module: MultiTaskModule) -> bool:
    return isinstance(module.model, RetrievalModel)


def tower_side(module: MultiTaskModule, side: Side, name: str, option: str) -> None:
    """The retrieval model's ``name`` ("user" or "item") side fields from ``side``'s table, tensorised with
    the checkpoint's preprocessing; a column the model does not read is ignored."""
    fields = module.model.user_fields if name == "user" else module.model.item_fields
    missing = [field for field in fields if field not in side.frame.columns]
    if missing:
        article = "a" if name == "user" else "an"
        raise DataError(f"{option}: {side.frame.attrs['source']} has no column '{missing[0]}', {article} {name}-side "
                        f"field of the retrieval model (model.retrieval.{name}.fields: {', '.join(fields)})")
    side.fields = list(fields)
    transform_side(side, module.hparams.preprocessing)


def tower_sides(module: MultiTaskModule, users: Side, items: Side, user_option: str, item_option: str) -> None:
    """Both sides (:func:`tower_side`), their content fields' encoders attached."""
    tower_side(module, users, "user", user_option)
    tower_side(module, items, "item", item_option)
    module.attach_content_encoders({"users": users.table, "items": items.table})


class TowerSearch:
    """Top-K for users of a :class:`Side` over the items of another with a retrieval model (eval mode).

    ``max_rows``: rows encoded at once by either tower, and users searched per block, which bounds
    the encoders' memory; the search itself is bounded by :func:`exact_topk`'s tiles.
    ``approximate``: search a faiss IVF-Flat index (:class:`ApproximateIndex`, ``nprobe`` lists) instead.
    """

    def __init__(self, module: MultiTaskModule, max_rows: int = 65536, approximate: bool = False, nprobe: int = 32):
        self.module, self.model, self.max_rows = module, module.model, max_rows
        self.approximate, self.nprobe = approximate, nprobe
        self.scale = 1.0 / self.model.temperature  # exact_topk's scores are then model.score's

    @torch.no_grad()
    def vectors(self, side: Side, rows: np.ndarray, tower: str) -> Tensor:
        """``[len(rows), D]``: the ``tower`` ("users" or "items") vectors of ``side``'s ``rows``."""
        self.module.eval()
        encode = self.model.encode_users if tower == "users" else self.model.encode_items
        rows = torch.as_tensor(rows, dtype=torch.long)
        return torch.cat([encode(side.table[rows[start:start + self.max_rows]].features)
                          for start in range(0, len(rows), self.max_rows)])

    def search(self, users: Side, items: Side, user_rows: np.ndarray, k: int,
               exclude: tuple[np.ndarray, np.ndarray] | None = None, with_exact: bool = False
               ) -> tuple[np.ndarray, np.ndarray, float | None]:
        """``(scores [U, K], item rows [U, K], recall)`` for each of ``user_rows`` (rows of ``users``),
        ``K = min(k, items)``, best first, -1 / -inf where a user has fewer candidates; ``exclude``:
        ``(user rows [P], item rows [P])`` of ``users`` and ``items`` never returned. ``recall``: with
        ``approximate`` and ``with_exact``, the share of the exact top K that the index found, else None."""
        item_vectors = self.vectors(items, np.arange(len(items.keys)), "items")
        index = ApproximateIndex(item_vectors, nprobe=self.nprobe, scale=self.scale) if self.approximate else None
        excluded_users, excluded_items = exclude if exclude is not None else (np.empty(0, int), np.empty(0, int))
        position = np.full(len(users.keys), -1)  # row of users -> its place in user_rows
        position[user_rows] = np.arange(len(user_rows))
        excluded_users = position[excluded_users]
        mine = excluded_users >= 0
        excluded_users, excluded_items = excluded_users[mine], excluded_items[mine]
        scores, rows, exact_rows = [], [], []
        for start in range(0, len(user_rows), self.max_rows):
            block = user_rows[start:start + self.max_rows]
            in_block = (excluded_users >= start) & (excluded_users < start + len(block))
            block_exclude = (excluded_users[in_block] - start, excluded_items[in_block])
            user_vectors = self.vectors(users, block, "users")
            if index is None:
                found = exact_topk(user_vectors, item_vectors, k, block_exclude, scale=self.scale)
            else:
                found = index.search(user_vectors, k, block_exclude)
                if with_exact:
                    exact_rows.append(exact_topk(user_vectors, item_vectors, k, block_exclude, scale=self.scale)[1])
            scores.append(found[0])
            rows.append(found[1])
        rows = np.concatenate(rows)
        recall = recall_against(np.concatenate(exact_rows), rows) if exact_rows else None
        return np.concatenate(scores), rows, recall
