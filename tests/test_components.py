"""Every registered trunk, and each built-in encoder and head, honours its slot's surface."""

from __future__ import annotations

import types

import pandas as pd
import pytest
import torch

from fusionrec import hookimpl
from fusionrec.components import FieldInfo, Trunk
from fusionrec.components.trunk import Scenarios, ScenarioTrunk, TrunkContext
from fusionrec.data.schema import parse_tasks
from fusionrec.errors import ConfigError
from fusionrec.models.multitask import build_trunk, check_trunk
from fusionrec.plugins import Registry, create_plugin_manager, get_registry
from fusionrec_heads.binary import BinaryHead

B = 5
ENCODER_INPUTS = {
    "categorical": (FieldInfo("f", "categorical", cardinality=10), lambda: torch.randint(0, 10, (B,))),
    "multi_categorical": (FieldInfo("f", "multi_categorical", cardinality=10, width=3),
                          lambda: torch.tensor([[2, 3, 0], [0, 0, 0], [4, 4, 4], [5, 0, 0], [9, 8, 7]])),
    "numeric": (FieldInfo("f", "numeric", width=2), lambda: torch.tensor([[0.5, 0.0]] * 4 + [[0.0, 1.0]])),
    "vector": (FieldInfo("f", "vector", width=6), lambda: torch.randn(B, 6)),
}


@pytest.mark.parametrize("name", sorted(ENCODER_INPUTS))
def test_builtin_encoders_map_their_field_to_batch_by_dim(name):
    info, make_input = ENCODER_INPUTS[name]
    encoder = get_registry().build("encoders", name, "test", info, 7)
    out = encoder(make_input())
    assert encoder.output_dim == 7 and out.shape == (B, 7)
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_numeric_fields_enter_as_value_and_flag_unless_given_a_dim():
    """Behind concat a projection of (value, flag) adds no function, only trunk width; an explicit
    ``dim`` still gets one."""
    from fusionrec.models.multitask import MultiTaskModel

    fields = {"item": FieldInfo("item", "categorical", cardinality=5), "price": FieldInfo("price", "numeric", width=2),
              "age": FieldInfo("age", "numeric", width=2)}
    model = MultiTaskModel.build(get_registry(), fields, {"click": {"head": "binary", "options": {}}},
                                 {"click": {"threshold": None}}, embedding_dim=6, encoders={"age": {"dim": 4}},
                                 fusion={"name": "concat"}, trunk={"name": "shared_bottom", "hidden": [8]})
    assert {name: e.output_dim for name, e in model.encoders.items()} == {"item": 6, "price": 2, "age": 4}
    assert model.fusion.output_dim == 12
    values = torch.tensor([[0.5, 0.0], [0.0, 1.0]])
    assert torch.equal(model.encoders["price"](values), values)
    assert model.encoders["age"](values).shape == (2, 4)


def test_multi_categorical_ignores_padding():
    info, _ = ENCODER_INPUTS["multi_categorical"]
    encoder = get_registry().build("encoders", "multi_categorical", "test", info, 4)
    ids = torch.tensor([[2, 3, 0, 0]])
    expected = encoder.embedding.weight[[2, 3]].mean(0)
    torch.testing.assert_close(encoder(ids)[0], expected)
    assert torch.equal(encoder(torch.zeros(1, 4, dtype=torch.long)), torch.zeros(1, 4))


def test_multi_categorical_exports_the_same_mean_without_embedding_bag():
    """Exported, the encoder is a gather and a masked mean (ONNX turns EmbeddingBag into a per-row loop)."""
    info, make_ids = ENCODER_INPUTS["multi_categorical"]
    encoder = get_registry().build("encoders", "multi_categorical", "test", info, 4).eval()
    ids = make_ids()  # full, partly padded and all-padding rows
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(encoder, (ids,), dynamic_shapes=({0: batch},))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("embedding_bag" in target for target in targets), targets
    torch.testing.assert_close(program.module()(ids), encoder(ids), rtol=0, atol=1e-7)
    torch.testing.assert_close(program.module()(ids[:2]), encoder(ids[:2]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", sorted(get_registry().components["trunks"]))
def test_every_trunk_gives_each_task_its_representation(name):
    factory = get_registry().get("trunks", name, "test").factory
    x = torch.randn(B, 12, requires_grad=True)
    if issubclass(factory, ScenarioTrunk):  # built with the scenario column, called with each row's scenario
        trunk = build_trunk(get_registry(), {"name": name}, "test", 12, ["click", "like"], Scenarios("s", 4, {"s": 3}))
        out = trunk(x, TrunkContext(torch.randint(2, 4, (B,)), {"s": torch.randn(B, 3)}))
    else:
        trunk = build_trunk(get_registry(), {"name": name}, "test", 12, ["click", "like"], None)
        out = trunk(x)
    assert set(out) == {"click", "like"}
    for task, h in out.items():
        assert h.shape == (B, trunk.output_dims[task])
    sum(h.sum() for h in out.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["mmoe", "ple"])
def test_gated_trunks_give_tasks_different_mixtures(name):
    trunk = get_registry().build("trunks", name, "test", 12, ["click", "like"])
    out = trunk(torch.randn(B, 12))
    assert not torch.allclose(out["click"], out["like"])


HEAD_LABELS = {
    "binary": pd.Series([0, 1, 1, 0, 1]),
    "regression": pd.Series([1.5, 2.0, 10.0, 0.0, 3.0]),
    "multiclass": pd.Series(["a", "b", "c", "a", "b"]),
    "multilabel": pd.Series(["a|b", "b", "", "c", "a|c"]),
}


@pytest.mark.parametrize("name", sorted(HEAD_LABELS))
def test_builtin_heads_share_one_surface(name):
    factory = get_registry().get("heads", name, "test").factory
    state = factory.fit_labels(HEAD_LABELS[name], "labels.csv, column 'y'", {})
    target = factory.encode_labels(HEAD_LABELS[name], state, "labels.csv, column 'y'")
    head = get_registry().build("heads", name, "test", 8, state)
    output = head(torch.randn(B, 8))
    loss = head.loss(output, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    scores = head.predict(output.detach())
    assert scores.shape[0] == B
    metrics = torch.nn.ModuleDict(head.metrics())
    head.update_metrics(metrics, output.detach(), target)
    assert all(torch.isfinite(torch.as_tensor(metric.compute())).all() for metric in metrics.values())


def test_regression_head_learns_in_standard_units_and_serves_the_label_scale():
    factory = get_registry().get("heads", "regression", "test").factory
    labels = pd.Series([100.0, 200.0, 300.0])
    head = factory(4, factory.fit_labels(labels, "w", {}))
    output = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(head.predict(output), torch.tensor([200.0, 200.0 + float(labels.std(ddof=0))]))
    torch.testing.assert_close(head.loss(torch.zeros(3), torch.tensor([100.0, 200.0, 300.0])), torch.tensor(1.0))


def test_fixed_balancer_is_the_weighted_sum():
    balancer = get_registry().build("balancers", "fixed", "test", {"a": 2.0, "b": 0.5})
    losses = {"a": torch.tensor(1.5), "b": torch.tensor(4.0)}
    assert balancer(losses, []).item() == pytest.approx(2.0 * 1.5 + 0.5 * 4.0)
    assert balancer.task_weights() == {"a": 2.0, "b": 0.5}


@pytest.mark.parametrize("name, options", [("mmoe", {"num_experts": 0}), ("ple", {"num_levels": 0}),
                                           ("ple", {"shared_experts": 0})])
def test_trunks_reject_empty_expert_configurations(name, options):
    from fusionrec.errors import ConfigError
    with pytest.raises(ConfigError, match="model.trunk"):
        get_registry().build("trunks", name, "model.trunk", 12, ["a"], **options)


def test_multilabel_auc_averages_only_labels_present_in_the_data():
    factory = get_registry().get("heads", "multilabel", "test").factory
    head = factory(4, {"classes": ["a", "b", "never"], "separator": "|"})
    metrics = torch.nn.ModuleDict(head.metrics())
    target = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    perfect_logits = (target.float() * 2 - 1) * 5
    head.update_metrics(metrics, perfect_logits, target)
    assert metrics["auc"].compute().item() == pytest.approx(1.0)


# --- contracts declared on the base classes ---

def _registry_with(**hooks) -> Registry:
    """The built-in components plus a plugin registered in code with ``hooks``."""
    manager, distributions = create_plugin_manager()
    manager.register(types.SimpleNamespace(**{name: hookimpl(hook) for name, hook in hooks.items()}), name="test")
    return Registry(manager, distributions)


class _Ensemble(Trunk):
    """A composite trunk: two trunks the framework builds from its options, side by side."""

    parts = {"first": {"name": "shared_bottom"}, "second": {"name": "mmoe", "num_experts": 2}}

    def __init__(self, input_dim: int, tasks: list[str], first: Trunk, second: Trunk, scale: float = 1.0):
        super().__init__(input_dim, tasks)
        self.first, self.second, self.scale = first, second, scale
        self.output_dims = {task: first.output_dims[task] + second.output_dims[task] for task in self.tasks}

    def forward(self, x):
        first, second = self.first(x), self.second(x)
        return {task: self.scale * torch.cat([first[task], second[task]], -1) for task in self.tasks}


def test_a_composite_trunk_gets_its_declared_parts_built_with_its_own_inputs():
    registry = _registry_with(fusionrec_register_trunks=lambda: {"ensemble": _Ensemble})
    config = {"name": "ensemble", "second": {"name": "mmoe", "num_experts": 3, "expert_hidden": [8]}, "scale": 2.0}
    trunk = build_trunk(registry, config, "model.trunk", 12, ["click"], None)
    assert type(trunk.first).__name__ == "SharedBottom"  # the declared default of an unset part
    assert len(trunk.second.experts.experts) == 3 and trunk.second.output_dims == {"click": 8}
    assert trunk.scale == 2.0
    assert trunk(torch.randn(B, 12))["click"].shape == (B, trunk.first.output_dims["click"] + 8)
    # A part's options are checked under its own key before anything is built.
    with pytest.raises(ConfigError, match=r"model\.trunk\.second: unknown option\(s\) 'experts'"):
        check_trunk(registry, {"name": "ensemble", "second": {"name": "mmoe", "experts": 2}}, "model.trunk")
    with pytest.raises(ConfigError, match=r"model\.trunk\.first: unknown trunk 'moe'"):
        check_trunk(registry, {"name": "ensemble", "first": {"name": "moe"}}, "model.trunk")


def test_the_balancers_shared_parameters_are_what_the_trunk_declares():
    trunk = build_trunk(get_registry(), {"name": "mmoe", "num_experts": 2}, "model.trunk", 12, ["a", "b"], None)
    trunk.gates["a"].logits.weight.requires_grad_(False)
    shared = trunk.shared_parameters()
    assert {id(p) for p in shared} == {id(p) for p in trunk.parameters() if p.requires_grad}
    assert all(p is not trunk.gates["a"].logits.weight for p in shared)


class _ProbitHead(BinaryHead):
    """A third-party head whose output is one event logit per row, so it declares it can be a parent."""


def test_a_conditional_tasks_parent_is_any_head_that_declares_it_can_be_one():
    registry = _registry_with(fusionrec_register_heads=lambda: {"probit": _ProbitHead})
    assert {name for name, c in registry.components["heads"].items() if c.factory.can_be_parent} == {"binary", "probit"}
    assert {name for name, c in registry.components["heads"].items() if c.factory.needs_groups} == {"bpr", "listwise"}
    tasks = parse_tasks({"buy": {"head": "esmm", "parent": "click"}, "click": {"head": "probit"}}, registry)
    assert tasks["buy"].parent == "click"
    _ProbitHead.can_be_parent = False
    try:
        with pytest.raises(ConfigError, match="task 'click' has a 'probit' head; a conditional task's parent "
                                              "needs a 'binary' head"):
            parse_tasks({"buy": {"head": "esmm", "parent": "click"}, "click": {"head": "probit"}}, registry)
    finally:
        del _ProbitHead.can_be_parent
