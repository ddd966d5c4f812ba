"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task."""

from __future__ import annotations

from torch import Tensor, nn

from fusionrec.components import Dropout, PositiveInt, Trunk
from fusionrec_trunks.experts import Experts, Gate


class MultiGateMixtureOfExperts(Trunk):
    """``[B, D] -> {task: [B, expert_hidden[-1]]}``: task t reads ``sum_e g_t(x)_e * expert_e(x)``."""

    def __init__(self, input_dim: int, tasks: list[str], num_experts: PositiveInt = 4,
                 expert_hidden: list[PositiveInt] = (128, 64), dropout: Dropout = 0.0):
        super().__init__(input_dim, tasks)
        self.experts = Experts(input_dim, num_experts, list(expert_hidden), dropout)
        self.gates = nn.ModuleDict({task: Gate(input_dim, num_experts) for task in self.tasks})
        self.output_dims = {task: self.experts.output_dim for task in self.tasks}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        expert_outputs = self.experts(x)  # [B, E, D_e]
        return {task: gate(x, expert_outputs) for task, gate in self.gates.items()}
