"""PEPNet (Chang et al., KDD 2023): gates computed from the scenario (and user) embeddings rescale
the fused embedding (EPNet) and every hidden layer of each task's tower (PPNet)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import Dropout, PositiveInt
from fusionrec.components.trunk import Scenarios, ScenarioTrunk, TrunkContext
from fusionrec.errors import ConfigError
from fusionrec.modules.feedforward import FeedForward


class GateUnit(nn.Module):
    """The paper's Gate NU, ``[B, I] -> [B, O]``: ``gamma * sigmoid(W2 relu(W1 x + b1) + b2)``, each
    gate in ``(0, gamma)``; gamma = 2 lets a gate amplify a signal as well as damp it, and a gate
    near the middle of its range (about 1 at initialisation) leaves the signal as it was."""

    def __init__(self, input_dim: int, hidden: int, output_dim: int, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma
        self.layers = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, output_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * torch.sigmoid(self.layers(x))


class ParameterEmbeddingPersonalizedNetwork(ScenarioTrunk):
    """``[B, D] -> {task: [B, tower[-1]]}``: PEPNet's EPNet and PPNet.

    - EPNet: ``O_ep = gate_ep([e_scenario, sg(x)]) ⊙ x``, the fused embedding rescaled per scenario
      (``sg``: stop-gradient, so the gate does not pull the embeddings it reads);
    - PPNet: ``prior = [e_scenario, e_prior_fields..., sg(O_ep)]``; for each layer l, one Gate NU
      gives every task t a gate ``g_t^l`` over that layer's input, ``H_t^{l+1} = relu(W_t^l (g_t^l ⊙
      H_t^l) + b_t^l)`` (dropout after), ``H_t^0 = O_ep``. The last gate rescales the tower's output,
      which is the input of the task head's layers: give the heads ``tower: []`` for the paper's
      layout, where every layer of a task's tower, its output layer included, reads gated input.

    ``prior_fields``: the fields whose embeddings personalise the towers besides the scenario's
    (the paper's user, item and author ids), e.g. ``[user_id]``. ``gate_hidden``: the width of
    each Gate NU's hidden layer.
    """

    def __init__(self, input_dim: int, tasks: list[str], scenarios: Scenarios,
                 tower: list[PositiveInt] = (128, 64), gate_hidden: PositiveInt = 64, prior_fields: list[str] = (),
                 dropout: Dropout = 0.0):
        super().__init__(input_dim, tasks, scenarios)
        unknown = sorted(set(prior_fields) - set(scenarios.field_dims))
        if unknown:
            raise ConfigError(f"model.trunk.prior_fields: no feature named {', '.join(unknown)}; "
                              f"features: {', '.join(scenarios.field_dims)}")
        scenario_dim = scenarios.field_dims[scenarios.field]
        self.embedding_gate = GateUnit(scenario_dim + input_dim, gate_hidden, input_dim)
        self.prior_fields = list(dict.fromkeys([scenarios.field, *prior_fields]))
        prior_dim = sum(scenarios.field_dims[field] for field in self.prior_fields) + input_dim
        widths = [input_dim, *tower]
        self.layer_gates = nn.ModuleList(GateUnit(prior_dim, gate_hidden, len(self.tasks) * width) for width in widths)
        self.towers = nn.ModuleList(nn.ModuleDict({task: FeedForward(i, [o], dropout) for task in self.tasks})
                                    for i, o in zip(widths, widths[1:]))
        self.output_dims = {task: widths[-1] for task in self.tasks}

    def forward(self, x: Tensor, context: TrunkContext) -> dict[str, Tensor]:
        scenario_embedding = context.fields[self.scenarios.field]
        personalized = self.embedding_gate(torch.cat([scenario_embedding, x.detach()], -1)) * x  # O_ep [B, D]
        prior = torch.cat([*(context.fields[field] for field in self.prior_fields), personalized.detach()], -1)
        hidden = {task: personalized for task in self.tasks}
        for depth, gate in enumerate(self.layer_gates):
            gates = gate(prior).chunk(len(self.tasks), dim=-1)  # T x [B, width of layer `depth`'s input]
            hidden = {task: task_gate * hidden[task] for task, task_gate in zip(self.tasks, gates)}
            if depth < len(self.towers):
                hidden = {task: layer(hidden[task]) for task, layer in self.towers[depth].items()}
        return hidden
