"""Evaluation metrics of the training module: every task's metrics per stage, overall and per
scenario, and the count of rows whose media content was unusable."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from fusionrec.components import TaskHead
from fusionrec.data.batches import Batch
from fusionrec.data.media import MediaBatch

EVAL_STAGES = ("val", "test")


class EvaluationMetrics(nn.Module):
    """``{stage}/{task}/{metric}`` for every head's ``metrics()``, and with ``data.scenario`` the same
    once more per scenario, on that scenario's rows: ``{stage}/{task}/{metric}/{scenario}``.

    ``scenarios``: ``[(scenario name, its categorical id)]``, empty without data.scenario. The
    torchmetrics states are not persistent, so none of this is in a checkpoint.
    """

    def __init__(self, heads: Mapping[str, TaskHead], scenarios: list[tuple[str, int]]):
        super().__init__()
        self.scenarios = scenarios
        self.overall = nn.ModuleDict({
            stage: nn.ModuleDict({task: nn.ModuleDict(head.metrics()) for task, head in heads.items()})
            for stage in EVAL_STAGES})
        # ``by_scenario[stage][task][str(position)]`` for ``scenarios[position]``.
        self.by_scenario = nn.ModuleDict({
            stage: nn.ModuleDict({task: nn.ModuleDict({str(position): nn.ModuleDict(head.metrics())
                                                       for position in range(len(scenarios))})
                                  for task, head in heads.items()})
            for stage in EVAL_STAGES})

    def update(self, stage: str, task: str, head: TaskHead, output: Tensor, target: Tensor, groups: Tensor | None,
               scenario: Tensor | None) -> None:
        """A batch's labelled rows of ``task``; ``scenario``: ``Long[N]``, each row's scenario id (None
        without data.scenario)."""
        head.update_metrics(self.overall[stage][task], output, target, groups)
        if scenario is None:
            return
        for position, (_, scenario_id) in enumerate(self.scenarios):
            selected = scenario == scenario_id
            if selected.any():
                head.update_metrics(self.by_scenario[stage][task][str(position)], output[selected], target[selected],
                                    None if groups is None else groups[selected])

    def compute(self, stage: str, reduce_sum: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """Every metric of ``stage`` by its logged name, each reset afterwards. ``reduce_sum`` sums a
        tensor over the processes of a distributed run (the identity on one)."""
        values = {}
        for task, metrics in self.overall[stage].items():
            for name, metric in metrics.items():
                values[f"{stage}/{task}/{name}"] = metric.compute()
                metric.reset()
        # Only the scenarios the split shows. Whether a scenario was seen is summed over processes, so
        # that every process computes (and synchronises) the same metrics even when its share of the
        # split lacks a scenario.
        per_scenario = [(task, position, metrics) for task, by_position in self.by_scenario[stage].items()
                        for position, metrics in by_position.items() if metrics]
        if not per_scenario:
            return values
        device = next(iter(per_scenario[0][2].values())).device
        seen = reduce_sum(torch.tensor([float(any(m.update_count for m in metrics.values()))
                                        for _, _, metrics in per_scenario], device=device))
        for (task, position, metrics), was_seen in zip(per_scenario, seen.tolist()):
            for name, metric in metrics.items():
                if was_seen:
                    values[f"{stage}/{task}/{name}/{self.scenarios[int(position)][0]}"] = metric.compute()
                metric.reset()
        return values


class MissingContent:
    """Per media field: the rows without usable content (logged once per epoch), and one warning
    per unreadable item, naming its path and a row that shows it."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Tensor] = {}
        self.reported: set[tuple[str, str]] = set()

    def count(self, batch: Batch, stage: str) -> None:
        for name, feature in batch.features.items():
            if not isinstance(feature, MediaBatch):
                continue
            key = (stage, name)
            self.rows[key] = self.rows.get(key, 0) + feature.missing_rows()
            for content, row, reason in feature.problems:
                if (name, content) not in self.reported:
                    self.reported.add((name, content))
                    rank_zero_warn(f"data.features.{name}: {content} (row {row} of the {stage} split): {reason}; "
                                   f"counted as missing (set data.features.{name}.strict: true to stop instead)")

    def pop(self, stage: str) -> dict[str, Tensor]:
        """``{stage}/{field}/missing_rows`` since the last call, as float tensors to sum over processes."""
        return {f"{stage}/{name}/missing_rows": self.rows.pop((key_stage, name)).float()
                for key_stage, name in [key for key in self.rows if key[0] == stage]}
