"""The multi-task model: encode -> fuse -> share -> heads."""

from __future__ import annotations

import graphlib
from typing import Any, Collection, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from fusionrec.components import (ContentEncoder, FieldEncoder, FieldInfo, Fusion, SequenceEncoder, TaskHead,
                                  Trunk)
from fusionrec.components.graph import link_graphs
from fusionrec.components.trunk import Scenarios, ScenarioTrunk, TrunkContext, run_trunk
from fusionrec.data.media import MediaBatch
from fusionrec.errors import ConfigError, DataError
from fusionrec.models.content import ContentField
from fusionrec.plugins import Registry, check_options


def default_encoder(registry: Registry, feature_type: str) -> str:
    """The encoder a field gets when the config names none: its feature type's ``default_encoder``."""
    return registry.get("feature_types", feature_type, "feature type").factory.default_encoder


class MultiTaskModel(nn.Module):
    """One shared representation, one head per task.

    ``forward(features)`` takes ``{field: [B, ...]}`` (a :class:`MediaBatch` for text, image and
    audio fields) and returns ``{task: output}``, each output ``[B]`` (binary, regression) or
    ``[B, C]`` (multiclass, multilabel).

    ``scenario_field``: the scenario column, whose ids a :class:`ScenarioTrunk` reads (``features``
    must then hold it).

    ``targets``: ``{sequence field: [feature per part]}`` for the history encoders that read the
    candidate (:attr:`SequenceEncoder.reads_target`): their ``target`` ``Long[B, P]`` stacks those
    features' ids (part 0's: the candidate item id).
    """

    def __init__(self, encoders: dict[str, FieldEncoder | ContentField], fusion: Fusion, trunk: Trunk,
                 heads: dict[str, TaskHead], scenario_field: str | None = None,
                 targets: dict[str, list[str]] | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)
        self.scenario_field = scenario_field
        self.targets = dict(targets or {})

    def content_fields(self) -> dict[str, ContentField]:
        """The media fields' encoders, ``{field: ContentField}``."""
        return {name: encoder for name, encoder in self.encoders.items() if isinstance(encoder, ContentField)}

    def encode(self, features: dict[str, Tensor | MediaBatch],
               skip: Collection[str] = ()) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The encoders of the fields in ``features`` (``{field: [N, ...]}``): ``({field: [N, D_f]},
        {media field: Bool[N] row has usable content})``. Top-K scoring encodes a catalogue's item
        fields once with it and passes the per-pair gathers to ``forward(..., encoded, present)``.
        A history read with the candidate (:attr:`targets`) is encoded only where ``features`` holds
        the candidate's fields too: top-K scoring encodes it per pair. ``skip``: fields encoded already."""
        encoded = {}
        for name, encoder in self.encoders.items():
            if name not in features or name in skip:
                continue
            if name not in self.targets:
                encoded[name] = encoder(features[name])
            elif all(field in features for field in self.targets[name]):
                target = torch.stack([features[field] for field in self.targets[name]], dim=-1)  # Long[B, P]
                encoded[name] = encoder(features[name], target)
        present = {name: batch.present_rows() for name, batch in features.items() if isinstance(batch, MediaBatch)}
        return encoded, present

    def forward(self, features: dict[str, Tensor | MediaBatch], encoded: dict[str, Tensor] | None = None,
                present: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``encoded``/``present``: fields encoded beforehand (see :meth:`encode`), not encoded again where
        ``features`` holds them too (the scenario ids, a candidate's ids a history reads)."""
        own_encoded, own_present = self.encode(features, encoded or {})
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
        built_encoders, targets = build_encoders(registry, fields, encoders, embedding_dim)
        fusion_options = dict(fusion)
        built_fusion = registry.build("fusions", fusion_options.pop("name"), "model.fusion",
                                      {name: encoder.output_dim for name, encoder in built_encoders.items()},
                                      **fusion_options)
        scenarios = None
        if scenario is not None and fields[scenario].type == "categorical":
            scenarios = Scenarios(scenario, fields[scenario].cardinality,
                                  {name: encoder.output_dim for name, encoder in built_encoders.items()})
        elif scenario is not None and reads_scenario(registry, trunk, "model.trunk"):
            raise ConfigError(f"data.scenario: {scenario!r} is a {fields[scenario].type} feature; a scenario "
                              f"column is categorical (leave it out of data.features or declare it so)")
        built_trunk = build_trunk(registry, trunk, "model.trunk", built_fusion.output_dim, list(tasks), scenarios)
        heads = {task: registry.build("heads", spec["head"], f"model.tasks.{task}", built_trunk.output_dims[task],
                                      label_states[task], **spec["options"])
                 for task, spec in tasks.items()}
        # Parents first, since forward hands each parent's output to its conditional tasks: the tasks
        # without a parent in config order, then the conditional ones (parse_tasks ruled out cycles).
        order = graphlib.TopologicalSorter({task: [head.parent] if head.parent else [] for task, head in heads.items()})
        return cls(built_encoders, built_fusion, built_trunk, {task: heads[task] for task in order.static_order()},
                   scenario, targets)


def build_encoders(registry: Registry, fields: dict[str, FieldInfo], encoders: dict[str, dict[str, Any]],
                   embedding_dim: int) -> tuple[dict[str, nn.Module], dict[str, list[str]]]:
    """Every field's encoder by registry name (``encoders``: per-field overrides ``{field: {name, dim,
    **options}}``), in ``fields`` order: ``({field: encoder}, {sequence field: the candidate's features
    it reads})`` (see :attr:`MultiTaskModel.targets`). Content encoders come wrapped in a :class:`ContentField`."""
    unknown = sorted(set(encoders) - set(fields))
    if unknown:
        raise ConfigError(f"model.encoders: no feature named {', '.join(unknown)}; features: {', '.join(fields)}")
    built_encoders, targets = {}, {}
    # Sequences sharing an id field's vocabulary last: they embed with that field's table.
    for name, info in sorted(fields.items(), key=lambda item: any(part.get("shares") for part in
                                                                  item[1].extra.get("parts", ()))):
        options = dict(encoders.get(name, {}))
        encoder_name = options.pop("name", default_encoder(registry, info.type))
        factory = registry.get("encoders", encoder_name, f"model.encoders.{name}").factory
        dim = options.pop("dim", None)
        content = check_reads(registry, name, encoder_name, factory, info, ContentEncoder)
        sequence = check_reads(registry, name, encoder_name, factory, info, SequenceEncoder)
        if sequence:
            tables = shared_tables(name, info, built_encoders)
            if dim is None and tables:  # by default a sequence is as wide as the table it shares
                dim = next(iter(tables.values())).embedding_dim
        if dim is None:
            dim = factory.default_dim(info, embedding_dim)
        if content:
            options.setdefault("strict", info.extra.get("strict", False))
        built_encoders[name] = registry.build("encoders", encoder_name, f"model.encoders.{name}",
                                              info, dim, **options)
        if content:  # run once per distinct item of a batch
            built_encoders[name] = ContentField(built_encoders[name])
        if sequence:
            share_tables(built_encoders[name], tables, name)
            if built_encoders[name].reads_target:
                targets[name] = target_fields(built_encoders[name], encoder_name, name)
    built_encoders = {name: built_encoders[name] for name in fields}
    link_graphs(built_encoders)
    return built_encoders, targets


def check_reads(registry: Registry, name: str, encoder_name: str, factory: Any, info: FieldInfo,
                base: type[ContentEncoder] | type[SequenceEncoder]) -> bool:
    """Whether the encoder is a ``base`` (a content or a sequence encoder), which it must be exactly when
    the field is a content or a sequence feature: any other encoder would fail on the field's input in
    the first batch."""
    reads = isinstance(factory, type) and issubclass(factory, base)
    if base is ContentEncoder:
        kind, field_is = "content", registry.get("feature_types", info.type, f"model.encoders.{name}").factory.content
    else:
        kind, field_is = "sequence", "parts" in info.extra
    if reads and not field_is:
        raise ConfigError(f"model.encoders.{name}: the '{encoder_name}' encoder reads a {kind} feature; "
                          f"'{name}' is a {info.type} feature")
    if field_is and not reads:
        fitting = [other for other, component in registry.components["encoders"].items()
                   if isinstance(component.factory, type) and issubclass(component.factory, base)]
        raise ConfigError(f"model.encoders.{name}: '{name}' ({info.type}) is a {kind} feature, which the "
                          f"'{encoder_name}' encoder does not read; {kind} encoders: "
                          f"{', '.join(fitting) or '(none installed)'}")
    return reads


def shared_tables(name: str, info: FieldInfo, built: dict[str, nn.Module]) -> dict[int, nn.Embedding]:
    """``{part: table}`` of a sequence's parts that share a categorical feature's vocabulary: that
    feature's encoder's embedding table (built already)."""
    tables = {}
    for index, part in enumerate(info.extra["parts"]):
        shares = part.get("shares")
        if shares is None:
            continue
        if shares not in built:
            raise ConfigError(f"model.encoders.{name}: the sequence shares the vocabulary of '{shares}', which is "
                              f"not a feature of the model")
        encoder = built[shares]
        table = encoder.id_embedding() if isinstance(encoder, FieldEncoder) else None
        if table is None:
            raise ConfigError(f"model.encoders.{name}: the sequence shares the vocabulary of '{shares}', whose "
                              f"encoder has no id embedding table to share; give '{shares}' the categorical encoder")
        if table.num_embeddings != part["cardinality"]:
            raise ConfigError(f"model.encoders.{name}: part '{part['name']}' has {part['cardinality']} ids but the "
                              f"table of '{shares}' it shares has {table.num_embeddings}")
        tables[index] = table
    return tables


def share_tables(encoder: SequenceEncoder, tables: dict[int, nn.Embedding], name: str) -> None:
    """Hand the shared tables over; each must be as wide as the sequence encoder's ``dim``."""
    for index, table in tables.items():
        shares = encoder.parts[index]["shares"]
        if table.embedding_dim != encoder.embedding_dim:
            raise ConfigError(f"model.encoders.{name}.dim: {encoder.embedding_dim}, but the embedding table it shares "
                              f"with '{shares}' is {table.embedding_dim} wide (model.encoders.{shares}.dim); "
                              f"give both the same dim")
        encoder.share(index, table)


def target_fields(encoder: SequenceEncoder, encoder_name: str, name: str) -> list[str]:
    """The features whose ids form an encoder's candidate ``target``: the one each part shares."""
    unshared = [part["name"] for part in encoder.parts if part.get("shares") is None]
    if unshared:
        raise ConfigError(f"model.encoders.{name}: the '{encoder_name}' encoder reads the candidate, which needs "
                          f"every part of the sequence to share an id feature's vocabulary (data.features.{name}."
                          f"vocabulary); part(s) {', '.join(unshared)} share none")
    return [part["shares"] for part in encoder.parts]


def _trunk_parts(registry: Registry, config: Mapping[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """A trunk's declared parts (:attr:`Trunk.parts`) as configured, ``{option: {name, **options}}``,
    the part's default filled in where the option is unset."""
    factory = registry.get("trunks", config["name"], key).factory
    parts = {}
    for part, default in factory.parts.items():
        value = config.get(part) or default
        if not isinstance(value, Mapping) or "name" not in value:
            raise ConfigError(f"{key}.{part}: give the trunk's name and options, e.g. {{name: mmoe, num_experts: 4}}; "
                              f"got {value!r}")
        parts[part] = dict(value)
    return parts


class TrunkNode(NamedTuple):
    """A trunk of a configuration: its config key (``model.trunk.base``), registry name, class, and
    options besides its parts."""

    key: str
    name: str
    factory: type
    options: dict[str, Any]


def trunk_tree(registry: Registry, config: Mapping[str, Any], key: str) -> list[TrunkNode]:
    """The trunk ``{name, **options}`` and every part it is built on, parts first."""
    factory = registry.get("trunks", config["name"], key).factory
    parts = _trunk_parts(registry, config, key)
    tree = [node for part, part_config in parts.items() for node in trunk_tree(registry, part_config, f"{key}.{part}")]
    options = {option: value for option, value in config.items() if option != "name" and option not in parts}
    return [*tree, TrunkNode(key, config["name"], factory, options)]


def _framework_inputs(factory: type) -> int:
    """How many leading parameters of a trunk the framework passes: input_dim, tasks, scenarios
    for a :class:`ScenarioTrunk`, and the built parts."""
    return 2 + issubclass(factory, ScenarioTrunk) + len(factory.parts)


def check_trunk(registry: Registry, config: Mapping[str, Any], key: str) -> None:
    """A trunk's options and its parts', before anything is built."""
    for node in trunk_tree(registry, config, key):
        check_options(node.factory, node.options, node.key, skip=_framework_inputs(node.factory))


def reads_scenario(registry: Registry, config: Mapping[str, Any], key: str) -> bool:
    """Whether the trunk, or a part it is built on, reads each row's scenario."""
    return any(issubclass(node.factory, ScenarioTrunk) for node in trunk_tree(registry, config, key))


def build_trunk(registry: Registry, config: Mapping[str, Any], key: str, input_dim: int, tasks: list[str],
                scenarios: Scenarios | None) -> Trunk:
    """The trunk ``{name, **options}`` and, first, the parts it is built on (:attr:`Trunk.parts`),
    each with the same inputs. ``scenarios``: None without data.scenario."""
    factory = registry.get("trunks", config["name"], key).factory
    inputs: list[Any] = [input_dim, list(tasks)]
    if issubclass(factory, ScenarioTrunk):
        if scenarios is None:
            raise ConfigError(f"{key}: the {config['name']!r} trunk reads each row's scenario; set "
                              f"data.scenario to the column naming it")
        inputs.append(scenarios)
    parts = _trunk_parts(registry, config, key)
    inputs += [build_trunk(registry, part_config, f"{key}.{part}", input_dim, tasks, scenarios)
               for part, part_config in parts.items()]
    options = {option: value for option, value in config.items() if option != "name" and option not in parts}
    return registry.build("trunks", config["name"], key, *inputs, **options)


def with_offset(output: Tensor, offset: Tensor | None) -> Tensor:
    """``output`` (``[B]`` or ``[B, C]``) plus a per-row ``offset`` (``[B]``) on every column."""
    if offset is None:
        return output
    return output + offset.reshape(-1, *[1] * (output.dim() - 1))
