"""Conditional binary events the ESMM way (Ma et al., SIGIR 2018): pCTCVR = pCTR x pCVR over all impressions."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from fusionrec.components import Dropout, PositiveInt
from fusionrec_heads.binary import BinaryHead
from fusionrec_heads.metrics import BinaryLogLoss, DefinedBinaryAUROC


class ConditionalBinaryHead(BinaryHead):
    """An event that can only follow its ``parent`` task's (a conversion after a click), modelled
    over every impression: ``P(parent and own) = P(parent) * P(own | parent)``.

    ``forward(h: [B, D_t], parent_logit: [B]) -> [B, 2]``: the parent's logit and this tower's
    conditional logit. The parent logit is not detached, following the paper's loss (its eq. 3:
    ``l(y, pCTR) + l(y & z, pCTR * pCVR)``, both terms functions of the CTR tower): the parent's
    tower learns from its own loss and from this one through the product, so the product is fitted
    by both towers rather than by pCVR alone against a frozen pCTR.

    Target ``[B, 2]``: (parent label, own label); the own label is 1 when both events happened
    (clicked AND converted), over every impression. The loss is the binary cross-entropy of
    pCTCVR against it, in log space. ``predict`` serves pCTCVR; ``conditional_probability`` gives
    pCVR. Metrics: ``ctcvr_auc`` and ``ctcvr_logloss`` on every row, ``cvr_auc`` on the rows whose
    parent label is 1. Labels are 0/1, or numbers with ``threshold`` as in the binary head; the
    preprocessor rejects an own label of 1 on a row whose parent label is 0.
    """

    primary_metric = "ctcvr_auc"
    can_be_parent = False  # its output is [B, 2], not the one event logit a conditional task reads

    def __init__(self, input_dim: int, label_state: dict, parent: str, tower: list[PositiveInt] = (64,),
                 dropout: Dropout = 0.0, threshold: float | None = None):
        super().__init__(input_dim, label_state, tower, dropout, threshold)
        self.parent = parent

    def forward(self, h: Tensor, parent_logit: Tensor) -> Tensor:
        return torch.stack([parent_logit, super().forward(h)], -1)

    @staticmethod
    def _log_probabilities(output: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p, log(1 - p))`` of ``p = sigmoid(a) * sigmoid(b)``, each ``[B]``, finite for
        any finite logits: ``1 - p = sigmoid(-a) + sigmoid(a) * sigmoid(-b)``."""
        parent, own = output[..., 0], output[..., 1]
        log_both = nn.functional.logsigmoid(parent) + nn.functional.logsigmoid(own)
        log_neither = torch.logaddexp(nn.functional.logsigmoid(-parent),
                                      nn.functional.logsigmoid(parent) + nn.functional.logsigmoid(-own))
        return log_both, log_neither

    def loss(self, output: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
        log_both, log_neither = self._log_probabilities(output)
        own = target[:, 1]
        return -(own * log_both + (1 - own) * log_neither).mean()

    def predict(self, output: Tensor) -> Tensor:
        """pCTCVR ``[B]``: the probability of the parent event and this one, per impression."""
        return self._log_probabilities(output)[0].exp()

    def conditional_probability(self, output: Tensor) -> Tensor:
        """pCVR ``[B]``: the probability of this event given the parent's."""
        return torch.sigmoid(output[..., 1])

    def metrics(self) -> dict[str, Metric]:
        return {"ctcvr_auc": DefinedBinaryAUROC(), "ctcvr_logloss": BinaryLogLoss(), "cvr_auc": DefinedBinaryAUROC()}

    def update_metrics(self, metrics: nn.ModuleDict, output: Tensor, target: Tensor,
                       groups: Tensor | None = None) -> None:
        parent, own = target[:, 0].long(), target[:, 1].long()
        both = self.predict(output)
        metrics["ctcvr_auc"].update(both, own)
        metrics["ctcvr_logloss"].update(both, own)
        after_parent = parent == 1  # pCVR is only defined, and only checkable, where the parent event happened
        metrics["cvr_auc"].update(self.conditional_probability(output[after_parent]), own[after_parent])
