"""The two-tower model (YouTube DNN; Yi et al., RecSys 2019): a user tower and an item tower, each
fields -> fusion -> trunk -> projection, meeting only in ``<u, v> / temperature``.

B = rows, L = a history's length, D = ``dim``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torch.nn import functional

from fusionrec.components import PositiveFloat, PositiveInt, SequenceEncoder
from fusionrec.components.graph import GraphEncoder
from fusionrec.components.retrieval import Features, RetrievalModel
from fusionrec.data.media import MediaBatch
from fusionrec.errors import ConfigError
from fusionrec.models.multitask import build_trunk
from fusionrec.plugins import Registry

TOWER_KEYS = ("fields", "fusion", "trunk")
TOWER_TASK = "tower"  # a trunk inside a tower serves one output


class Tower(nn.Module):
    """``{field: [B, D_f]}`` (and the content fields' ``present``) -> fusion -> trunk (optional) ->
    ``Linear`` -> ``[B, D]``, L2-normalised with ``normalize``."""

    def __init__(self, registry: Registry, key: str, input_dims: dict[str, int], dim: int, normalize: bool,
                 fusion: Mapping[str, Any] | None, trunk: Mapping[str, Any] | None):
        super().__init__()
        fusion_options = dict(fusion or {"name": "concat"})
        self.fusion = registry.build("fusions", fusion_options.pop("name", "concat"), f"{key}.fusion", input_dims,
                                     **fusion_options)
        self.trunk = None if trunk is None else build_trunk(registry, trunk, f"{key}.trunk", self.fusion.output_dim,
                                                            [TOWER_TASK], None)
        width = self.fusion.output_dim if self.trunk is None else self.trunk.output_dims[TOWER_TASK]
        self.projection = nn.Linear(width, dim)
        self.normalize = normalize

    def forward(self, encoded: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        x = self.fusion(encoded, present)
        if self.trunk is not None:
            x = self.trunk(x)[TOWER_TASK]
        x = self.projection(x)
        return functional.normalize(x, dim=-1) if self.normalize else x


class TwoTowerModel(RetrievalModel):
    """``user`` and ``item``: ``{fields: [...], fusion: {name, ...} (default concat), trunk: {name, ...}
    (default none)}``; every feature is on exactly one side (a graph encoder's content fields may be
    on neither). ``dim``: both towers' output width;
    ``normalize``: unit-length outputs, so the score is a cosine over ``temperature``.

    The user tower may not read the candidate item (a history encoded with target attention): item
    vectors must be computable once per catalogue, user vectors once per user.
    """

    def __init__(self, encoders: dict[str, nn.Module], registry: Registry, user: dict[str, Any],
                 item: dict[str, Any], dim: PositiveInt = 64, normalize: bool = True,
                 temperature: PositiveFloat = 0.05):
        super().__init__(encoders)
        sides = {"user": tower_config(user, "model.retrieval.user", encoders),
                 "item": tower_config(item, "model.retrieval.item", encoders)}
        check_sides(sides["user"]["fields"], sides["item"]["fields"], encoders)
        self.user_fields, self.item_fields = sides["user"]["fields"], sides["item"]["fields"]
        self.output_dim, self.temperature = int(dim), float(temperature)
        self.user_tower, self.item_tower = (
            Tower(registry, f"model.retrieval.{side}", {name: encoders[name].output_dim for name in config["fields"]},
                  self.output_dim, normalize, config.get("fusion"), config.get("trunk"))
            for side, config in sides.items())

    def _encode(self, tower: Tower, fields: list[str], features: Features) -> Tensor:
        encoded = {name: self.encoders[name](features[name]) for name in fields}
        present = {name: features[name].present_rows() for name in fields if isinstance(features[name], MediaBatch)}
        return tower(encoded, present)

    def encode_users(self, features: Features) -> Tensor:
        return self._encode(self.user_tower, self.user_fields, features)

    def encode_items(self, features: Features) -> Tensor:
        return self._encode(self.item_tower, self.item_fields, features)

    def encode_user_positions(self, features: Features, history: str) -> tuple[Tensor, Tensor]:
        ids = features[history]  # Long[B, L, P]
        batch, length = ids.shape[:2]
        # The other user fields are the same at every position: encoded once, repeated L times.
        encoded = {name: self.encoders[name](features[name]).repeat_interleave(length, dim=0)
                   for name in self.user_fields if name != history}
        present = {name: features[name].present_rows().repeat_interleave(length, dim=0)
                   for name in self.user_fields if isinstance(features[name], MediaBatch)}
        positions = self.encoders[history].encode_positions(ids)  # [B, L, D_h]
        encoded[history] = positions.reshape(batch * length, positions.shape[-1])
        users = self.user_tower({name: encoded[name] for name in self.user_fields}, present)
        return users.view(batch, length, users.shape[-1]), ids[..., 0] != 0


def tower_config(config: Any, key: str, encoders: dict[str, nn.Module]) -> dict[str, Any]:
    """A side's ``{fields, fusion, trunk}``, its fields known features."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{key}: expected {{fields: [...], fusion: ..., trunk: ...}}, got {config!r}")
    unknown = sorted(set(config) - set(TOWER_KEYS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(TOWER_KEYS)}")
    fields = config.get("fields")
    if not isinstance(fields, list) or not fields or not all(isinstance(name, str) for name in fields):
        raise ConfigError(f"{key}.fields: expected a non-empty list of feature names, got {fields!r}")
    missing = [name for name in fields if name not in encoders]
    if missing:
        raise ConfigError(f"{key}.fields: no feature named {', '.join(missing)}; features: {', '.join(encoders)}")
    for option in ("fusion", "trunk"):
        if config.get(option) is not None and not (isinstance(config[option], Mapping) and "name" in config[option]):
            raise ConfigError(f"{key}.{option}: give a name and options, e.g. {{name: shared_bottom, hidden: [128]}}")
    return {**config, "fields": list(fields)}


def check_sides(user: list[str], item: list[str], encoders: dict[str, nn.Module]) -> None:
    """Every feature on exactly one side, and no user-side history that reads the candidate."""
    both = [name for name in user if name in item]
    if both:
        raise ConfigError(f"model.retrieval: {', '.join(both)} is in both towers' fields; each feature belongs to "
                          f"the user side or the item side")
    # A graph encoder's content fields may stay out of the towers: the item graph reads them once, at setup.
    graph_content = {field for encoder in encoders.values() if isinstance(encoder, GraphEncoder)
                     for field in encoder.content_fields()}
    neither = [name for name in encoders if name not in user and name not in item and name not in graph_content]
    if neither:
        raise ConfigError(f"model.retrieval: feature(s) {', '.join(neither)} are in neither tower's fields; add "
                          f"each to model.retrieval.user.fields or model.retrieval.item.fields, or drop it from "
                          f"data.features")
    for name in user:
        encoder = encoders[name]
        if isinstance(encoder, SequenceEncoder) and encoder.reads_target:
            raise ConfigError(f"model.retrieval.user.fields: '{name}' is encoded with the candidate item "
                              f"({type(encoder).__name__}); a user tower must not read the item, or item vectors "
                              f"could not be computed once per catalogue: give '{name}' an encoder that reads "
                              f"the history alone (sequence_mean, or sasrec with readout: last)")
