"""Scenario-specific task towers on top of any trunk."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import Dropout, PositiveInt, Trunk
from fusionrec.components.trunk import Scenarios, ScenarioTrunk, TrunkContext, run_trunk
from fusionrec_trunks.per_scenario import ScenarioLinear


class ScenarioFeedForward(nn.Module):
    """``[B, I] -> [B, widths[-1]]``: Linear-ReLU-Dropout per width, with each scenario's own weights."""

    def __init__(self, input_dim: int, widths: list[int], count: int, dropout: float):
        super().__init__()
        dims = [input_dim, *widths]
        self.layers = nn.ModuleList(ScenarioLinear(i, o, count) for i, o in zip(dims, dims[1:]))
        self.dropout = nn.Dropout(dropout)
        self.output_dim = dims[-1]

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        for layer in self.layers:
            x = self.dropout(torch.relu(layer(x, scenario)))
        return x


class ScenarioTowers(ScenarioTrunk):
    """``[B, D] -> {task: [B, hidden[-1]]}``: the ``base`` trunk (``{name, **options}``, any trunk),
    then for each task one tower per scenario, each row through its scenario's tower.

    Every scenario's tower trains on its own rows only; a scenario never seen in training gets the
    out-of-vocabulary tower, which learns only from scenarios rarer than the vocabulary's
    ``min_count``. The base's logit offsets (STAR's auxiliary network) pass through.
    """

    parts = {"base": {"name": "shared_bottom"}}

    def __init__(self, input_dim: int, tasks: list[str], scenarios: Scenarios, base: Trunk,
                 hidden: list[PositiveInt] = (64,), dropout: Dropout = 0.0):
        super().__init__(input_dim, tasks, scenarios)
        self.base = base
        self.towers = nn.ModuleDict({task: ScenarioFeedForward(self.base.output_dims[task], list(hidden),
                                                               scenarios.count, dropout) for task in self.tasks})
        self.output_dims = {task: tower.output_dim for task, tower in self.towers.items()}

    def forward(self, x: Tensor, context: TrunkContext) -> dict[str, Tensor]:
        shared = run_trunk(self.base, x, context)
        return {task: tower(shared[task], context.scenario) for task, tower in self.towers.items()}

    def logit_offsets(self, x: Tensor, context: TrunkContext | None) -> dict[str, Tensor]:
        return self.base.logit_offsets(x, context)
