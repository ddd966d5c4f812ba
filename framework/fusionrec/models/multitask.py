"""The multi-task model: encode -> fuse -> share -> heads."""

from __future__ import annotations

import graphlib
from typing import Any

from torch import Tensor, nn

from fusionrec.components import FieldEncoder, FieldInfo, Fusion, TaskHead, Trunk
from fusionrec.components.trunk import Scenarios, ScenarioTrunk, TrunkContext, run_trunk
from fusionrec.data.media import MEDIA_TYPES, MediaBatch
from fusionrec.errors import ConfigError, DataError
from fusionrec.models.content import ContentField
from fusionrec.plugins import Registry


def default_encoder(feature_type: str) -> str:
    """The encoder a field gets when the config names none: the feature type's own name, except
    audio, whose default is the trainable log-mel CNN."""
    return {"audio": "audio_cnn"}.get(feature_type, feature_type)


class MultiTaskModel(nn.Module):
    """One shared representation, one head per task.

    ``forward(features)`` takes ``{field: [B, ...]}`` (a :class:`MediaBatch` for text, image and
    audio fields) and returns ``{task: output}``, each output ``[B]`` (binary, regression) or
    ``[B, C]`` (multiclass, multilabel).

    ``scenario_field``: the scenario column, whose ids a :class:`ScenarioTrunk` reads (``features``
    must then hold it).
    """

    def __init__(self, encoders: dict[str, FieldEncoder | ContentField], fusion: Fusion, trunk: Trunk,
                 heads: dict[str, TaskHead], scenario_field: str | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)
        self.scenario_field = scenario_field

    def encode(self, features: dict[str, Tensor | MediaBatch]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The encoders of the fields in ``features`` (``{field: [N, ...]}``): ``({field: [N, D_f]},
        {media field: Bool[N] row has usable content})``. Top-K scoring encodes a catalogue's item
        fields once with it and passes the per-pair gathers to ``forward(..., encoded, present)``."""
        encoded = {name: encoder(features[name]) for name, encoder in self.encoders.items() if name in features}
        present = {name: batch.present_rows() for name, batch in features.items() if isinstance(batch, MediaBatch)}
        return encoded, present

    def forward(self, features: dict[str, Tensor | MediaBatch], encoded: dict[str, Tensor] | None = None,
                present: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``encoded``/``present``: fields encoded beforehand (see :meth:`encode`), left out of ``features``."""
        own_encoded, own_present = self.encode(features)
        encoded = {**own_encoded, **(encoded or {})}  # {F: [B, D_f]}
        present = {**own_present, **(present or {})}
        fused = self.fusion(encoded, present)  # [B, D]
        context = self.trunk_context(features, encoded)  # None unless the trunk reads each row's scenario
        shared = run_trunk(self.trunk, fused, context)  # {T: [B, D_t]}
        offsets = self.trunk.logit_offsets(fused, context)  # {T: [B]}, e.g. STAR's auxiliary network
        outputs: dict[str, Tensor] = {}
        for task, head in self.heads.items():  # parents come before their conditional tasks
            if head.parent is None:
                outputs[task] = with_offset(head(shared[task]), offsets.get(task))
            else:  # its output holds the parent's logit, which already has the parent's offset
                outputs[task] = head(shared[task], outputs[head.parent])
        return outputs

    def trunk_context(self, features: dict[str, Tensor | MediaBatch],
                      encoded: dict[str, Tensor]) -> TrunkContext | None:
        """What a :class:`ScenarioTrunk` reads besides the fused input: the scenario ids and every encoding."""
        if not isinstance(self.trunk, ScenarioTrunk):
            return None
        if self.scenario_field not in features:
            raise DataError(f"the {type(self.trunk).__name__} trunk reads each row's scenario id: the features "
                            f"must hold the column {self.scenario_field!r}, not only its encoding")
        return TrunkContext(scenario=features[self.scenario_field], fields=encoded)

    @classmethod
    def build(cls, registry: Registry, fields: dict[str, FieldInfo], tasks: dict[str, dict[str, Any]],
              label_states: dict[str, dict], embedding_dim: int, encoders: dict[str, dict[str, Any]],
              fusion: dict[str, Any], trunk: dict[str, Any], scenario: str | None = None) -> "MultiTaskModel":
        """Build every component by registry name. ``tasks``: ``{task: {head, options}}``;
        ``fusion`` and ``trunk``: ``{name, **options}``; ``encoders``: per-field overrides;
        ``scenario``: the scenario column (``data.scenario``), needed by scenario-aware trunks."""
        unknown = sorted(set(encoders) - set(fields))
        if unknown:
            raise ConfigError(f"model.encoders: no feature named {', '.join(unknown)}; features: {', '.join(fields)}")
        built_encoders = {}
        for name, info in fields.items():
            options = dict(encoders.get(name, {}))
            encoder_name = options.pop("name", default_encoder(info.type))
            factory = registry.get("encoders", encoder_name, f"model.encoders.{name}").factory
            dim = options.pop("dim", None)
            if dim is None:
                dim = factory.default_dim(info, embedding_dim)
            if info.type in MEDIA_TYPES:
                options.setdefault("strict", info.extra.get("strict", False))
            built_encoders[name] = registry.build("encoders", encoder_name, f"model.encoders.{name}",
                                                  info, dim, **options)
            if info.type in MEDIA_TYPES:
                built_encoders[name] = ContentField(built_encoders[name])
        fusion_options = dict(fusion)
        built_fusion = registry.build("fusions", fusion_options.pop("name"), "model.fusion",
                                      {name: encoder.output_dim for name, encoder in built_encoders.items()},
                                      **fusion_options)
        trunk_options = dict(trunk)
        trunk_name = trunk_options.pop("name")
        trunk_inputs = [built_fusion.output_dim, list(tasks)]
        if issubclass(registry.get("trunks", trunk_name, "model.trunk").factory, ScenarioTrunk):
            if scenario is None:
                raise ConfigError(f"model.trunk: the {trunk_name!r} trunk reads each row's scenario; set "
                                  f"data.scenario to the column naming it")
            if fields[scenario].type != "categorical":
                raise ConfigError(f"data.scenario: {scenario!r} is a {fields[scenario].type} feature; a scenario "
                                  f"column is categorical (leave it out of data.features or declare it so)")
            trunk_inputs.append(Scenarios(scenario, fields[scenario].cardinality,
                                          {name: encoder.output_dim for name, encoder in built_encoders.items()}))
        built_trunk = registry.build("trunks", trunk_name, "model.trunk", *trunk_inputs, **trunk_options)
        heads = {task: registry.build("heads", spec["head"], f"model.tasks.{task}", built_trunk.output_dims[task],
                                      label_states[task], **spec["options"])
                 for task, spec in tasks.items()}
        # Parents first, since forward hands each parent's output to its conditional tasks: the tasks
        # without a parent in config order, then the conditional ones (parse_tasks ruled out cycles).
        order = graphlib.TopologicalSorter({task: [head.parent] if head.parent else [] for task, head in heads.items()})
        return cls(built_encoders, built_fusion, built_trunk, {task: heads[task] for task in order.static_order()},
                   scenario)


def with_offset(output: Tensor, offset: Tensor | None) -> Tensor:
    """``output`` (``[B]`` or ``[B, C]``) plus a per-row ``offset`` (``[B]``) on every column."""
    if offset is None:
        return output
    return output + offset.reshape(-1, *[1] * (output.dim() - 1))
