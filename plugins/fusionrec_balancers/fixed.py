"""The seed article's weighting: ``L = sum_i alpha_i * L_i`` with alpha_i from the config."""

from __future__ import annotations

from torch import Tensor, nn

from fusionrec.components import LossBalancer


class FixedWeights(LossBalancer):
    def forward(self, losses: dict[str, Tensor], shared: list[nn.Parameter]) -> Tensor:
        return self.weighted_sum(losses)
