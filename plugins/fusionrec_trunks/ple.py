"""PLE (Tang et al., RecSys 2020): stacked CGC levels of task-specific and shared experts."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import Dropout, PositiveInt, Trunk
from fusionrec_trunks.experts import Experts, Gate


class CustomizedGateControl(nn.Module):
    """One CGC level. Task t's gate mixes its own experts and the shared ones, read from task t's
    input; unless this is the last level, a shared gate mixes all experts for the next level."""

    def __init__(self, input_dim: int, tasks: list[str], shared_experts: int, task_experts: int,
                 hidden: list[int], dropout: float, last: bool):
        super().__init__()
        self.tasks = tasks
        self.shared = Experts(input_dim, shared_experts, hidden, dropout)
        self.specific = nn.ModuleDict({t: Experts(input_dim, task_experts, hidden, dropout) for t in tasks})
        self.task_gates = nn.ModuleDict({t: Gate(input_dim, task_experts + shared_experts) for t in tasks})
        self.shared_gate = None if last else Gate(input_dim, len(tasks) * task_experts + shared_experts)
        self.output_dim = self.shared.output_dim

    def forward(self, task_inputs: dict[str, Tensor], shared_input: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        shared = self.shared(shared_input)  # [B, E_s, D_e]
        specific = {t: self.specific[t](task_inputs[t]) for t in self.tasks}  # {T: [B, E_t, D_e]}
        outputs = {t: self.task_gates[t](task_inputs[t], torch.cat([specific[t], shared], dim=1)) for t in self.tasks}
        if self.shared_gate is None:
            return outputs, None
        everything = torch.cat([*specific.values(), shared], dim=1)
        return outputs, self.shared_gate(shared_input, everything)


class ProgressiveLayeredExtraction(Trunk):
    """``[B, D] -> {task: [B, expert_hidden[-1]]}`` through ``num_levels`` CGC levels."""

    def __init__(self, input_dim: int, tasks: list[str], num_levels: PositiveInt = 2,
                 shared_experts: PositiveInt = 1, task_experts: PositiveInt = 1,
                 expert_hidden: list[PositiveInt] = (128, 64), dropout: Dropout = 0.0):
        super().__init__(input_dim, tasks)
        levels = []
        for level in range(num_levels):
            levels.append(CustomizedGateControl(input_dim, self.tasks, shared_experts, task_experts,
                                                list(expert_hidden), dropout, last=level == num_levels - 1))
            input_dim = levels[-1].output_dim
        self.levels = nn.ModuleList(levels)
        self.output_dims = {task: input_dim for task in self.tasks}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        task_inputs, shared_input = {task: x for task in self.tasks}, x
        for level in self.levels:
            task_inputs, shared_input = level(task_inputs, shared_input)
        return task_inputs
