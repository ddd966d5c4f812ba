"""Affine maps with one weight matrix per scenario, the block of STAR and of scenario-specific towers."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def per_scenario_affine(x: Tensor, weight: Tensor, bias: Tensor, scenario: Tensor) -> Tensor:
    """Each row of ``x`` (``[B, I]``) through its scenario's map: ``weight`` ``[I, S, O]``, ``bias``
    ``[S, O]``, ``scenario`` ``Long[B]`` -> ``[B, O]``.

    One matmul runs every scenario's map on every row and each row keeps its own: S times the work
    of one map, which for the handful of scenarios these models serve is cheaper than gathering a
    weight matrix per row (``[B, I, O]``), and the shapes stay fixed, so the model exports.
    """
    inputs, count, outputs = weight.shape
    every = (x @ weight.reshape(inputs, count * outputs)).view(-1, count, outputs) + bias  # [B, S, O]
    return every.gather(1, scenario.view(-1, 1, 1).expand(-1, 1, outputs)).squeeze(1)


class ScenarioLinear(nn.Module):
    """``[B, I] -> [B, O]`` with an independent affine map per scenario id."""

    def __init__(self, input_dim: int, output_dim: int, count: int):
        super().__init__()
        bound = input_dim ** -0.5  # nn.Linear's default initialisation, for each scenario's map
        self.weight = nn.Parameter(torch.empty(input_dim, count, output_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(count, output_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        return per_scenario_affine(x, self.weight, self.bias, scenario)
