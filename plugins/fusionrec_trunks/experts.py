"""Mixture-of-experts blocks shared by MMoE and PLE."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.modules.feedforward import FeedForward


class Experts(nn.Module):
    """``E`` expert MLPs over the same input: ``[B, D] -> [B, E, D_e]``."""

    def __init__(self, input_dim: int, count: int, hidden: list[int], dropout: float):
        super().__init__()
        self.experts = nn.ModuleList(FeedForward(input_dim, hidden, dropout) for _ in range(count))
        self.output_dim = self.experts[0].output_dim  # trunks require count >= 1

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)


class Gate(nn.Module):
    """Softmax weights over ``E`` experts from the gate's input: mixes ``[B, E, D_e] -> [B, D_e]``."""

    def __init__(self, input_dim: int, num_experts: int):
        super().__init__()
        self.logits = nn.Linear(input_dim, num_experts)

    def forward(self, gate_input: Tensor, expert_outputs: Tensor) -> Tensor:
        weights = torch.softmax(self.logits(gate_input), dim=-1)  # [B, E]
        # A broadcast multiply-and-sum: einsum would run it as B tiny batched matmuls, ~10x slower on CPU.
        return (weights.unsqueeze(-1) * expert_outputs).sum(dim=1)
