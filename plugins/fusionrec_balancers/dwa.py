"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019): weights from how fast each task's
average training loss fell over the last epoch."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fusionrec.components import LossBalancer, PositiveFloat


class DynamicWeightAverage(LossBalancer):
    """``L = sum_i alpha_i * w_i * L_i`` with, from the third epoch on,

        ``w_i = T * softmax_i(r / temperature)``,  ``r_i = Lbar_i(e-1) / Lbar_i(e-2)``,

    ``Lbar_i(e)`` being task i's average training loss over epoch e (averaged over every process
    under DDP), and ``w_i = 1`` for the first two epochs. A task whose loss fell less gets more
    weight. No gradients and no learned parameters: the cost is a running sum per step. The history
    of epoch averages is in buffers, so a run resumed from an end-of-epoch checkpoint goes on with
    the same weights.
    """

    def __init__(self, weights: dict[str, float], temperature: PositiveFloat = 2.0):
        super().__init__(weights)
        self.temperature = float(temperature)
        tasks = len(self.tasks)
        self.register_buffer("history", torch.zeros(2, tasks))  # [2, T]: Lbar(e-2), Lbar(e-1)
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))  # epochs in the history
        self.register_buffer("weight", torch.ones(tasks))  # [T], w
        # [T + 1]: this epoch's loss sums and step count. Not a buffer: DDP overwrites buffers with
        # process 0's before every forward, and each process must sum its own losses.
        self.epoch_totals: Tensor | None = None

    def forward(self, losses: dict[str, Tensor], shared: list[nn.Parameter]) -> Tensor:
        stacked = self.stacked(losses)  # [T]
        step = torch.cat([stacked.detach().float(), stacked.new_ones(1, dtype=torch.float32)])
        self.epoch_totals = step if self.epoch_totals is None else self.epoch_totals + step
        return stacked @ (self.alpha * self.weight).to(stacked.dtype)

    def on_train_epoch_end(self) -> None:
        if self.epoch_totals is None:  # an epoch without training steps
            return
        totals, self.epoch_totals = self.epoch_totals, None
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)  # every process must compute the same weights
        self.history.copy_(torch.stack([self.history[1], totals[:-1] / totals[-1]]))
        self.epochs += 1
        if self.epochs >= 2:
            self.weight.copy_(len(self.tasks) * torch.softmax(self.history[1] / self.history[0] / self.temperature, 0))

    def task_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, (self.alpha * self.weight).tolist()))
