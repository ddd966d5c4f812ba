"""STAR (Sheng et al., CIKM 2021, "One Model to Serve All"): a star-topology network whose every
layer multiplies shared weights with per-scenario ones, partitioned normalisation, and an auxiliary
network over the scenario that adds to every task's logit."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import Dropout, PositiveInt
from fusionrec.components.trunk import Scenarios, ScenarioTrunk, TrunkContext
from fusionrec.errors import ConfigError
from fusionrec.modules.feedforward import FeedForward
from fusionrec_trunks.per_scenario import per_scenario_affine


class StarLayer(nn.Module):
    """A fully-connected layer of the star topology, ``[B, I] -> [B, O]``: scenario p's weights are
    ``W ⊙ W_p`` and its bias ``b + b_p`` (the paper's eq. 1-2), so the shared ``W, b`` learn from
    every scenario's rows and ``W_p, b_p`` only from scenario p's."""

    def __init__(self, input_dim: int, output_dim: int, count: int):
        super().__init__()
        shared = nn.Linear(input_dim, output_dim)  # for its default initialisation
        self.shared_weight = nn.Parameter(shared.weight.detach().T.contiguous())  # [I, O]
        self.shared_bias = nn.Parameter(shared.bias.detach().clone())  # [O]
        # Ones and zeros: every scenario starts as the shared layer, and one never seen in training
        # (the out-of-vocabulary row) stays it.
        self.scenario_weight = nn.Parameter(torch.ones(input_dim, count, output_dim))  # [I, S, O]
        self.scenario_bias = nn.Parameter(torch.zeros(count, output_dim))  # [S, O]

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        weight = self.shared_weight.unsqueeze(1) * self.scenario_weight  # [I, S, O]
        return per_scenario_affine(x, weight, self.shared_bias + self.scenario_bias, scenario)


class PartitionedNorm(nn.Module):
    """Partitioned normalisation, ``[B, D] -> [B, D]``: for a row of scenario p,
    ``(gamma * gamma_p) * (z - mu) / sqrt(var + eps) + (beta + beta_p)``.

    In training ``mu`` and ``var`` are the batch statistics of scenario p's rows (the paper trains
    on single-scenario batches; in a mixed batch each scenario's rows are normalised among
    themselves) and update scenario p's moving averages; in evaluation scenario p's moving averages
    are used. A scenario with no moving averages yet (never seen in training) falls back to those
    of all rows.
    """

    def __init__(self, width: int, count: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.scale = nn.Parameter(torch.ones(width))
        self.shift = nn.Parameter(torch.zeros(width))
        self.scenario_scale = nn.Parameter(torch.ones(count, width))
        self.scenario_shift = nn.Parameter(torch.zeros(count, width))
        self.register_buffer("running_mean", torch.zeros(count, width))
        self.register_buffer("running_var", torch.ones(count, width))
        self.register_buffer("seen", torch.zeros(count, dtype=torch.bool))
        self.register_buffer("overall_mean", torch.zeros(width))
        self.register_buffer("overall_var", torch.ones(width))

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        mean, var = self._batch_statistics(x, scenario) if self.training else self._moving_statistics()  # [S, D]
        normalised = (x - mean[scenario]) * torch.rsqrt(var[scenario] + self.eps)
        return normalised * (self.scale * self.scenario_scale[scenario]) + self.shift + self.scenario_shift[scenario]

    def _batch_statistics(self, x: Tensor, scenario: Tensor) -> tuple[Tensor, Tensor]:
        """Each scenario's mean and variance over its rows of the batch, ``[S, D]`` each (zeros for
        a scenario without rows), folded into its moving averages."""
        count, width = self.running_mean.shape
        rows = torch.zeros(count, device=x.device, dtype=x.dtype).index_add_(0, scenario, torch.ones_like(x[:, 0]))
        per_row = rows.clamp(min=1).unsqueeze(-1)  # [S, 1]
        mean = x.new_zeros(count, width).index_add_(0, scenario, x) / per_row
        var = x.new_zeros(count, width).index_add_(0, scenario, (x - mean[scenario]) ** 2) / per_row
        with torch.no_grad():
            # Unbiased variances for the moving averages, as BatchNorm keeps; a scenario needs two rows.
            kept = self.running_mean.dtype
            updated = (rows > 1).unsqueeze(-1)
            unbiased = var * (rows / (rows - 1).clamp(min=1)).unsqueeze(-1)
            self.running_mean.copy_(torch.where(updated, self.running_mean.lerp(mean.to(kept), self.momentum),
                                                self.running_mean))
            self.running_var.copy_(torch.where(updated, self.running_var.lerp(unbiased.to(kept), self.momentum),
                                               self.running_var))
            self.seen |= updated.squeeze(-1)
            if len(x) > 1:
                self.overall_mean.lerp_(x.mean(0).to(kept), self.momentum)
                self.overall_var.lerp_(x.var(0).to(kept), self.momentum)
        return mean, var

    def _moving_statistics(self) -> tuple[Tensor, Tensor]:
        seen = self.seen.unsqueeze(-1)
        return (torch.where(seen, self.running_mean, self.overall_mean),
                torch.where(seen, self.running_var, self.overall_var))


class StarTopologyAdaptiveRecommender(ScenarioTrunk):
    """``[B, D] -> {task: [B, hidden[-1]]}``, the same tensor for every task, plus a logit offset per
    task from the auxiliary network.

    ``x -> PartitionedNorm -> StarLayer-ReLU-Dropout per width of hidden``. The auxiliary network
    (``auxiliary_hidden`` widths, ReLU, then one output per task) reads the scenario's embedding and
    those of ``auxiliary_fields`` (the paper's "other features depicting the domain"); its output
    is added to each task's logit. ``auxiliary_hidden: null`` leaves it out.
    """

    def __init__(self, input_dim: int, tasks: list[str], scenarios: Scenarios,
                 hidden: list[PositiveInt] = (256, 128), dropout: Dropout = 0.0,
                 auxiliary_hidden: list[PositiveInt] | None = (32,),
                 auxiliary_fields: list[str] = ()):
        super().__init__(input_dim, tasks, scenarios)
        unknown = sorted(set(auxiliary_fields) - set(scenarios.field_dims))
        if unknown:
            raise ConfigError(f"model.trunk.auxiliary_fields: no feature named {', '.join(unknown)}; "
                              f"features: {', '.join(scenarios.field_dims)}")
        self.norm = PartitionedNorm(input_dim, scenarios.count)
        widths = [input_dim, *hidden]
        self.layers = nn.ModuleList(StarLayer(i, o, scenarios.count) for i, o in zip(widths, widths[1:]))
        self.dropout = nn.Dropout(dropout)
        self.auxiliary_fields = list(dict.fromkeys([scenarios.field, *auxiliary_fields]))
        self.auxiliary = None
        if auxiliary_hidden is not None:
            auxiliary_input = sum(scenarios.field_dims[field] for field in self.auxiliary_fields)
            body = FeedForward(auxiliary_input, list(auxiliary_hidden))
            self.auxiliary = nn.Sequential(body, nn.Linear(body.output_dim, len(self.tasks)))
        self.output_dims = {task: widths[-1] for task in self.tasks}

    def forward(self, x: Tensor, context: TrunkContext) -> dict[str, Tensor]:
        h = self.norm(x, context.scenario)
        for layer in self.layers:
            h = self.dropout(torch.relu(layer(h, context.scenario)))
        return {task: h for task in self.tasks}

    def logit_offsets(self, x: Tensor, context: TrunkContext | None) -> dict[str, Tensor]:
        if self.auxiliary is None:
            return {}
        offsets = self.auxiliary(torch.cat([context.fields[field] for field in self.auxiliary_fields], -1))  # [B, T]
        return {task: offsets[:, position] for position, task in enumerate(self.tasks)}
