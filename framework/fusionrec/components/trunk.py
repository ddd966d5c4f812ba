"""Shared trunks: the fused representation in, one representation per task out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn


@dataclass(frozen=True)
class Scenarios:
    """What a scenario-aware trunk is built with, read off the fitted preprocessing.

    ``field``: the scenario column (``data.scenario``), a categorical feature. ``count``: its ids,
    the reserved padding (0) and out-of-vocabulary (1) ones included; per-scenario parameters have
    one row per id, so a scenario never seen in training uses the out-of-vocabulary row.
    ``field_dims``: the width of every encoded field, ``{field: D_f}``, for trunks that read some.
    """

    field: str
    count: int
    field_dims: dict[str, int]


@dataclass
class TrunkContext:
    """Per-row inputs of a scenario-aware trunk besides the fused representation.

    ``scenario``: ``Long[B]``, each row's scenario id. ``fields``: ``{field: [B, D_f]}``, every
    encoded field (the scenario's own embedding among them).
    """

    scenario: Tensor
    fields: dict[str, Tensor]


class Trunk(nn.Module):
    """Base of every trunk plugin: ``(input_dim, tasks: list[str], **options)``.

    Sets ``output_dims = {task: D_t}``; ``forward(x: [B, D]) -> {task: [B, D_t]}``. Trunks that
    read each row's scenario derive from :class:`ScenarioTrunk`.

    A composite trunk, built on other trunks, declares them in ``parts``: ``{option: the config
    used when the option is unset}``, e.g. ``{"base": {"name": "shared_bottom"}}``. The framework
    builds each part from the option's ``{name, **options}`` by registry name, with this trunk's
    own ``input_dim``, ``tasks`` (and scenarios), and passes the built parts as positional
    arguments after those, in ``parts`` order: ``(input_dim, tasks, [scenarios,] *parts,
    **options)``. The checkpoint's manifest records the parts' plugins too.
    """

    output_dims: dict[str, int]
    parts: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, input_dim: int, tasks: list[str]):
        super().__init__()
        self.input_dim = input_dim
        self.tasks = list(tasks)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def logit_offsets(self, x: Tensor, context: TrunkContext | None) -> dict[str, Tensor]:
        """``{task: [B]}`` added to those tasks' outputs (a binary head's logit, a regression head's
        standardised value; every class of a multi-output head alike), e.g. STAR's auxiliary
        network. None by default."""
        return {}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters the tasks share, where gradient-based balancers (GradNorm, PCGrad)
        compare the tasks' gradients: every trainable parameter of the trunk by default. The
        embedding tables upstream are never among them (their dense per-task gradients would be
        huge)."""
        return [p for p in self.parameters() if p.requires_grad]


class ScenarioTrunk(Trunk):
    """Base of trunks that read each row's scenario: built as ``(input_dim, tasks, scenarios:
    Scenarios, **options)`` (the model fills in ``scenarios``; a config without ``data.scenario``
    cannot use them) and called as ``forward(x: [B, D], context: TrunkContext)``.

    Per-scenario parameters are indexed by scenario id over the fixed ``scenarios.count``, never
    chosen in Python per batch, so the model stays exportable.
    """

    def __init__(self, input_dim: int, tasks: list[str], scenarios: Scenarios):
        super().__init__(input_dim, tasks)
        self.scenarios = scenarios

    def forward(self, x: Tensor, context: TrunkContext) -> dict[str, Tensor]:
        raise NotImplementedError


def run_trunk(trunk: Trunk, x: Tensor, context: TrunkContext | None) -> dict[str, Tensor]:
    """``trunk(x)``, with the context for a trunk that reads each row's scenario."""
    return trunk(x, context) if isinstance(trunk, ScenarioTrunk) else trunk(x)
