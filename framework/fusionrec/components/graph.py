"""Graph encoders: an id field's embeddings propagated over the training split's user-item graph."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from fusionrec.components.encoder import FieldEncoder
from fusionrec.components.options import PositiveInt
from fusionrec.errors import ConfigError
from fusionrec.features.base import FieldInfo
from fusionrec.features.values import checked_positive

GRAPH_KEYS = ("user", "item", "positive")


class GraphEncoder(FieldEncoder):
    """Base of the encoders of a user id or an item id field that read the interaction graph.

    ``graph: {user, item, positive}``: the categorical features naming a row's user and item (the
    field is one of them) and, optionally, which training rows are edges (``{column, min}``, as a
    history's ``positive``; every row without it). A model gives the user field and the item field
    graph encoders of the same graph; it links the two (:meth:`link`, user side first) before any
    forward and hands the user side the training split's edges (:meth:`use_interactions`), also on a
    model restored from a checkpoint, which must keep the edges it was trained with.
    """

    def __init__(self, field: FieldInfo, dim: PositiveInt, graph: dict[str, Any]):
        super().__init__(field, dim)
        self.graph = checked_graph(graph, f"model.encoders.{field.name}.graph")
        if field.name not in (self.graph["user"], self.graph["item"]):
            raise ConfigError(f"model.encoders.{field.name}.graph: the field is neither the graph's user "
                              f"({self.graph['user']}) nor its item ({self.graph['item']})")
        self.side: Literal["user", "item"] = "user" if field.name == self.graph["user"] else "item"

    def link(self, item: "GraphEncoder") -> None:
        """Called on the user side's encoder with the item side's: share what propagation needs."""
        raise NotImplementedError

    def use_interactions(self, users: Tensor, items: Tensor) -> None:
        """Called on the user side's encoder: the edges ``(users [E], items [E])``, the two fields' ids."""
        raise NotImplementedError

    def content_fields(self) -> list[str]:
        """The content fields (text, image, audio read by a frozen encoder, or vectors) whose item vectors
        the encoder reads (:meth:`use_item_content`); none by default."""
        return []

    def use_item_content(self, vectors: dict[str, Tensor], present: dict[str, Tensor]) -> None:
        """Called on an item side's encoder with :meth:`content_fields`: ``{field: [I, D_f]}``, each item
        id's vector (its ``data.catalogue`` row's, else its first training row's), and ``{field: Bool[I]}``,
        which ids have one."""
        raise NotImplementedError


def checked_graph(graph: Any, key: str) -> dict[str, Any]:
    if not isinstance(graph, dict) or not isinstance(graph.get("user"), str) or not isinstance(graph.get("item"), str):
        raise ConfigError(f"{key}: expected {{user: <user id feature>, item: <item id feature>, positive: "
                          f"{{column, min}}}} (positive optional), got {graph!r}")
    unknown = sorted(set(graph) - set(GRAPH_KEYS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(GRAPH_KEYS)}")
    return {"user": graph["user"], "item": graph["item"],
            "positive": checked_positive(graph.get("positive"), f"{key}.positive")}


def link_graphs(encoders: dict[str, FieldEncoder]) -> list[GraphEncoder]:
    """Link each graph's user-side and item-side encoders; the user-side ones, which take the edges."""
    users = {}
    for name, encoder in encoders.items():
        if not isinstance(encoder, GraphEncoder):
            continue
        other = encoder.graph["item"] if encoder.side == "user" else encoder.graph["user"]
        partner = encoders.get(other)
        if not isinstance(partner, GraphEncoder) or partner.graph != encoder.graph:
            raise ConfigError(f"model.encoders.{name}: its graph needs the {'item' if encoder.side == 'user' else 'user'}"
                              f" feature '{other}' encoded by a graph encoder with the same graph option "
                              f"({encoder.graph})")
        if encoder.side == "user":
            users[name] = encoder
    for user in users.values():
        user.link(encoders[user.graph["item"]])
    return list(users.values())
