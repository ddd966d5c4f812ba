"""LightGCN (He et al., SIGIR 2020): id embeddings propagated over the user-item graph.

U users, I items (the two fields' vocabularies), E edges, D = ``dim``, K = ``layers``. With
``A = [[0, R], [R^T, 0]]`` (R: ``[U, I]``, 1 per trained (user, item) pair) and
``A_hat = D^-1/2 A D^-1/2``, the output tables are ``mean(E_0, A_hat E_0, ..., A_hat^K E_0)`` over the
concatenated ``[U + I, D]`` embeddings ``E_0``. No weights besides the embeddings, no non-linearity.

Cost: each training forward propagates the whole graph, ``K`` sparse products of ``2E`` non-zeros by
``D`` columns, once per linked encoder (twice a step); in eval mode the tables are propagated once
and kept until the model trains again, so validation, top-K and export read plain tables.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fusionrec.components import FieldInfo, PositiveInt
from fusionrec.components.graph import GraphEncoder
from fusionrec.errors import ConfigError
from fusionrec.features.base import RESERVED

INIT_STD = 0.1  # as the LightGCN reference implementation


class Propagation(nn.Module):
    """The graph both linked encoders share: their tables, the edges (a buffer, saved in checkpoints)
    and the propagated tables ``(users [U, D], items [I, D])``."""

    def __init__(self, users: nn.Embedding, items: nn.Embedding, layers: int):
        super().__init__()
        self.users, self.items, self.layers = users, items, layers
        self.register_buffer("edges", torch.zeros(2, 0, dtype=torch.long))  # [2, E]: user ids, item ids
        self.adjacency: Tensor | None = None  # A_hat, sparse [U + I, U + I], built from the edges once
        self.propagated: tuple[Tensor, Tensor] | None = None  # eval mode's tables

    def set_edges(self, users: Tensor, items: Tensor) -> None:
        """Distinct (user, item) pairs; pairs with a reserved id (padding, out of vocabulary) are no edges:
        the out-of-vocabulary id would join every rare user or item into one hub."""
        known = (users >= RESERVED) & (items >= RESERVED)
        pairs = torch.unique(torch.stack([users[known], items[known]]), dim=1)
        self.edges = pairs.to(self.users.weight.device)
        self.adjacency, self.propagated = None, None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # The saved graph's size is the data's: take it as saved rather than into the empty buffer.
        if prefix + "edges" in state_dict:
            self.edges = torch.empty_like(state_dict[prefix + "edges"])
        self.adjacency, self.propagated = None, None
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _apply(self, fn: Any, recurse: bool = True) -> "Propagation":
        self.adjacency, self.propagated = None, None  # rebuilt on the edges' new device
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "Propagation":
        self.propagated = None  # parameters change in training; eval mode propagates once, afresh
        return super().train(mode)

    def normalised_adjacency(self) -> Tensor:
        if self.adjacency is None:
            num_users = self.users.num_embeddings
            size = num_users + self.items.num_embeddings
            users, items = self.edges[0], self.edges[1] + num_users
            rows, columns = torch.cat([users, items]), torch.cat([items, users])  # both directions
            degree = torch.bincount(rows, minlength=size).float()
            scale = degree.clamp(min=1).rsqrt()
            values = scale[rows] * scale[columns]
            self.adjacency = torch.sparse_coo_tensor(torch.stack([rows, columns]), values, (size, size)).coalesce()
        return self.adjacency

    def forward(self) -> tuple[Tensor, Tensor]:
        if not self.training and self.propagated is not None:
            return self.propagated
        layer = torch.cat([self.users.weight, self.items.weight])  # [U + I, D]
        total = layer
        adjacency = self.normalised_adjacency()
        for _ in range(self.layers):
            layer = torch.sparse.mm(adjacency, layer)
            total = total + layer
        tables = (total / (self.layers + 1)).split([self.users.num_embeddings, self.items.num_embeddings])
        if not self.training:
            self.propagated = tuple(table.detach() for table in tables)
            return self.propagated
        return tables


class LightGCNEncoder(GraphEncoder):
    """``Long[B] -> [B, dim]``: the row's user (or item) in the propagated table.

    ``graph: {user, item, positive}`` (:class:`GraphEncoder`); ``layers``: K, the propagation steps (3
    in the paper). Both fields need ``lightgcn`` with the same ``graph`` and ``layers`` and the same
    ``dim``. An id without edges (unseen in training, out of vocabulary) keeps its own embedding over
    ``K + 1``.
    """

    def __init__(self, field: FieldInfo, dim: PositiveInt, graph: dict[str, Any], layers: PositiveInt = 3):
        super().__init__(field, dim, graph)
        self.embedding = nn.Embedding(field.cardinality, dim)
        nn.init.normal_(self.embedding.weight, std=INIT_STD)
        self.layers = layers
        self.propagation: Propagation | None = None

    def id_embedding(self) -> nn.Embedding:
        return self.embedding

    def link(self, item: "GraphEncoder") -> None:
        if not isinstance(item, LightGCNEncoder) or (item.layers, item.output_dim) != (self.layers, self.output_dim):
            raise ConfigError(f"model.encoders.{item.field.name}: the graph's two fields need the lightgcn encoder "
                              f"with the same layers and dim as '{self.field.name}'")
        self.propagation = item.propagation = Propagation(self.embedding, item.embedding, self.layers)

    def use_interactions(self, users: Tensor, items: Tensor) -> None:
        self.propagation.set_edges(users, items)

    def forward(self, ids: Tensor) -> Tensor:
        users, items = self.propagation()
        return (users if self.side == "user" else items)[ids]
