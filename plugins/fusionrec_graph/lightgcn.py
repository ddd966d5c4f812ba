"""LightGCN (He et al., SIGIR 2020): id embeddings propagated over the user-item graph.

U users, I items (the two fields' vocabularies), E edges, D = ``dim``, K = ``layers``. With
``A = [[0, R], [R^T, 0]]`` (R: ``[U, I]``, 1 per trained (user, item) pair) and
``A_hat = D^-1/2 A D^-1/2``, the output tables are ``mean(E_0, A_hat E_0, ..., A_hat^K E_0)`` over the
concatenated ``[U + I, D]`` embeddings ``E_0``. No weights besides the embeddings, no non-linearity.

With ``content`` (on the item field), FREEDOM's item-item graph (Zhou et al., ACM MM 2023) is added:
for each content field a frozen kNN graph of its item vectors (each item's ``neighbours`` most
cosine-similar items), the fields' graphs summed with their weights and normalised like ``A``; the
item table gets ``normalise(S_hat^L E_items)`` added (L = ``content_layers``), so an item with few or
no training interactions is represented through the items its content resembles.

Cost: each training step propagates the whole graph once, ``K`` sparse (CSR) products of ``2E``
non-zeros by ``D`` columns, and as many in the backward pass (the second linked encoder reuses the
step's tables); in eval mode the tables are propagated once and kept until the model trains again, so
validation, top-K and export read plain tables.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fusionrec.components import FieldInfo, PositiveFloat, PositiveInt
from fusionrec.components.graph import GraphEncoder
from fusionrec.errors import ConfigError
from fusionrec.features.base import RESERVED
from fusionrec.recommend.vectors import exact_topk

INIT_STD = 0.1  # as the LightGCN reference implementation


@contextlib.contextmanager
def quiet_sparse() -> Iterator[None]:
    """Without torch's notices that sparse CSR support is in beta and invariant checks are off: the
    matrices are built here from checked ids, and the products and their backward are tested."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse (CSR tensor support is in beta|invariant checks are implicitly)")
        yield


class Propagation(nn.Module):
    """The graph both linked encoders share: their tables, the edges (saved in checkpoints)
    and the propagated tables ``(users [U, D], items [I, D])``."""

    def __init__(self, users: nn.Embedding, items: nn.Embedding, layers: int, item_layers: int):
        super().__init__()
        self.users, self.items, self.layers, self.item_layers = users, items, layers, item_layers
        # The graphs are the module's extra state, not buffers: saved in checkpoints, but not broadcast to
        # every process at each step by DistributedDataParallel (every process builds the same graphs).
        self.edges = torch.zeros(2, 0, dtype=torch.long)  # [2, E]: user ids, item ids
        # The content item-item graph: [2, M] (item, neighbour) pairs and their [M] summed field weights.
        self.item_edges = torch.zeros(2, 0, dtype=torch.long)
        self.item_weights = torch.zeros(0)
        self.adjacency: Tensor | None = None  # A_hat, sparse CSR [U + I, U + I], built from the edges once
        self.content_adjacency: Tensor | None = None  # S_hat, sparse [I, I]
        self.propagated: tuple[Tensor, Tensor] | None = None  # eval mode's tables
        # Training: the tables of the current step, which the other linked encoder reuses; dropped when
        # the backward pass reaches them (after which the parameters change).
        self.step_tables: tuple[Tensor, Tensor] | None = None

    def set_edges(self, users: Tensor, items: Tensor) -> None:
        """Distinct (user, item) pairs; pairs with a reserved id (padding, out of vocabulary) are no edges:
        the out-of-vocabulary id would join every rare user or item into one hub."""
        known = (users >= RESERVED) & (items >= RESERVED)
        # One key per pair: a 1-D unique, 25x faster and 12x smaller than unique(dim=1) at 10M pairs.
        keys = torch.unique(users[known] * self.items.num_embeddings + items[known])
        pairs = torch.stack([keys // self.items.num_embeddings, keys % self.items.num_embeddings])
        self.edges = pairs
        self.adjacency, self.propagated, self.step_tables = None, None, None

    def set_item_graph(self, edges: Tensor, weights: Tensor) -> None:
        self.item_edges, self.item_weights = edges, weights
        self.content_adjacency, self.propagated, self.step_tables = None, None, None

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"edges": self.edges, "item_edges": self.item_edges, "item_weights": self.item_weights}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.edges, self.item_edges, self.item_weights = state["edges"], state["item_edges"], state["item_weights"]
        self.adjacency, self.content_adjacency, self.propagated, self.step_tables = None, None, None, None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints written before the graphs became extra state (fusionrec 0.1.0) hold them as buffers.
        if prefix + "edges" in state_dict and prefix + "_extra_state" not in state_dict:
            state_dict[prefix + "_extra_state"] = {name: state_dict.pop(prefix + name)
                                                   for name in ("edges", "item_edges", "item_weights")}
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _apply(self, fn: Any, recurse: bool = True) -> "Propagation":
        # The sparse matrices are rebuilt on the tables' new device.
        self.adjacency, self.content_adjacency, self.propagated, self.step_tables = None, None, None, None
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "Propagation":
        self.propagated, self.step_tables = None, None  # eval mode propagates once, afresh
        return super().train(mode)

    def item_adjacency(self) -> Tensor:
        """``S_hat``: the content graph, symmetric-normalised by its weighted degrees, ``[I, I]``."""
        if self.content_adjacency is not None:
            return self.content_adjacency
        size, device = self.items.num_embeddings, self.items.weight.device
        edges, weights = self.item_edges.to(device), self.item_weights.to(device)
        rows, columns = edges
        degree = torch.zeros(size, device=device).index_add_(0, rows, weights)
        scale = degree.clamp(min=1e-12).rsqrt()
        values = weights * scale[rows] * scale[columns]
        with quiet_sparse():
            self.content_adjacency = torch.sparse_coo_tensor(edges, values, (size, size)).coalesce()
        return self.content_adjacency

    def normalised_adjacency(self) -> Tensor:
        if self.adjacency is None:
            num_users = self.users.num_embeddings
            size = num_users + self.items.num_embeddings
            edges = self.edges.to(self.users.weight.device)
            users, items = edges[0], edges[1] + num_users
            rows, columns = torch.cat([users, items]), torch.cat([items, users])  # both directions
            degree = torch.bincount(rows, minlength=size).float()
            scale = degree.clamp(min=1).rsqrt()
            values = scale[rows] * scale[columns]
            with quiet_sparse():
                coo = torch.sparse_coo_tensor(torch.stack([rows, columns]), values, (size, size)).coalesce()
                self.adjacency = coo.to_sparse_csr()
        return self.adjacency

    def forward(self) -> tuple[Tensor, Tensor]:
        if not self.training and self.propagated is not None:
            return self.propagated
        if self.training and self.step_tables is not None:
            return self.step_tables
        layer = torch.cat([self.users.weight, self.items.weight])  # [U + I, D]
        total = layer
        adjacency = self.normalised_adjacency()
        for _ in range(self.layers):
            layer = SymmetricProduct.apply(adjacency, layer)
            total = total + layer
        users, items = (total / (self.layers + 1)).split([self.users.num_embeddings, self.items.num_embeddings])
        if self.item_edges.shape[1]:
            content, similar = self.item_adjacency(), self.items.weight
            for _ in range(self.item_layers):
                similar = torch.sparse.mm(content, similar)
            items = items + nn.functional.normalize(similar, dim=-1)
        tables = (users, items)
        if not self.training:
            self.propagated = tuple(table.detach() for table in tables)
            return self.propagated
        if torch.is_grad_enabled():
            self.step_tables = tables
            total.register_hook(self._backward_reached)
        return tables

    def _backward_reached(self, gradient: Tensor) -> None:
        self.step_tables = None


class SymmetricProduct(torch.autograd.Function):
    """``A @ X`` for a sparse CSR ``A`` equal to its transpose: the backward is ``A @ grad`` again. Torch's
    own sparse backward builds ``A^T`` and a gradient for ``A`` on every call (3x slower at 10M edges)."""

    @staticmethod
    def forward(ctx: Any, adjacency: Tensor, dense: Tensor) -> Tensor:
        ctx.adjacency = adjacency
        return adjacency @ dense

    @staticmethod
    def backward(ctx: Any, gradient: Tensor) -> tuple[None, Tensor]:
        return None, ctx.adjacency @ gradient


class LightGCNEncoder(GraphEncoder):
    """``Long[B] -> [B, dim]``: the row's user (or item) in the propagated table.

    ``graph: {user, item, positive}`` (:class:`GraphEncoder`); ``layers``: K, the propagation steps (3
    in the paper). Both fields need ``lightgcn`` with the same ``graph`` and ``layers`` and the same
    ``dim``. An id without edges (unseen in training, out of vocabulary) keeps its own embedding over
    ``K + 1``.
    """

    def __init__(self, field: FieldInfo, dim: PositiveInt, graph: dict[str, Any], layers: PositiveInt = 3,
                 content: dict[str, PositiveFloat] | None = None, neighbours: PositiveInt = 10,
                 content_layers: PositiveInt = 1):
        super().__init__(field, dim, graph)
        if content and self.side == "user":
            raise ConfigError(f"model.encoders.{field.name}.content: the content graph is an item-item graph; give "
                              f"it to the item field '{self.graph['item']}'")
        self.embedding = nn.Embedding(field.cardinality, dim)
        nn.init.normal_(self.embedding.weight, std=INIT_STD)
        self.layers = layers
        self.content, self.neighbours, self.content_layers = dict(content or {}), neighbours, content_layers
        self.propagation: Propagation | None = None

    def id_embedding(self) -> nn.Embedding:
        return self.embedding

    def link(self, item: "GraphEncoder") -> None:
        if not isinstance(item, LightGCNEncoder) or (item.layers, item.output_dim) != (self.layers, self.output_dim):
            raise ConfigError(f"model.encoders.{item.field.name}: the graph's two fields need the lightgcn encoder "
                              f"with the same layers and dim as '{self.field.name}'")
        self.propagation = item.propagation = Propagation(self.embedding, item.embedding, self.layers,
                                                          item.content_layers)

    def use_interactions(self, users: Tensor, items: Tensor) -> None:
        self.propagation.set_edges(users, items)

    def content_fields(self) -> list[str]:
        return list(self.content)

    def use_item_content(self, vectors: dict[str, Tensor], present: dict[str, Tensor]) -> None:
        graphs = {field: knn_graph(vectors[field], present[field], self.neighbours) for field in self.content}
        edges = torch.cat(list(graphs.values()), dim=1)
        weights = torch.cat([torch.full((graph.shape[1],), float(self.content[field])) for field, graph in graphs.items()])
        # The fields' graphs summed: a pair in several adds their weights.
        keys, inverse = torch.unique(edges[0] * self.field.cardinality + edges[1], return_inverse=True)
        pairs = torch.stack([keys // self.field.cardinality, keys % self.field.cardinality])
        summed = torch.zeros(len(keys)).index_add_(0, inverse, weights)
        self.propagation.set_item_graph(pairs, summed)

    def forward(self, ids: Tensor) -> Tensor:
        users, items = self.propagation()
        return (users if self.side == "user" else items)[ids]


def knn_graph(vectors: Tensor, present: Tensor, neighbours: int) -> Tensor:
    """``[2, M]`` (item, neighbour) ids: each present item's ``neighbours`` most cosine-similar other
    present items (fewer when fewer items have a vector), by the blocked exact top-K of top-K
    recommendation, so memory stays one tile of scores whatever the catalogue size. Reserved ids
    (padding, out of vocabulary) take no part."""
    present = present.clone()
    present[:RESERVED] = False
    ids = torch.nonzero(present).squeeze(1)
    k = min(neighbours, len(ids) - 1)
    if k < 1:
        return torch.zeros(2, 0, dtype=torch.long)
    unit = nn.functional.normalize(vectors[ids].float(), dim=-1)
    itself = np.arange(len(ids))
    _, chosen = exact_topk(unit, unit, k, exclude=(itself, itself))
    return torch.stack([ids.repeat_interleave(k), ids[torch.from_numpy(chosen).flatten()]])
