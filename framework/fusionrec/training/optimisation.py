"""The optimiser of the training module and its parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from fusionrec.components import LossBalancer
from fusionrec.models.content import ContentField


def parameter_groups(module: nn.Module, content_fields: dict[str, ContentField], balancer: LossBalancer,
                     learning_rate: float) -> list[dict]:
    """Adam's parameter groups over ``module``'s trainable parameters (frozen ones are left out):
    the rest first, then every content backbone with its own ``learning_rate``, then the balancer's
    learned task weights with its learning rate (GradNorm and FAMO use ~0.025; ``None``: the
    model's ``learning_rate``) and no weight decay, which would pull log-variances and logits towards
    0 against their objective. The order is the one checkpoints' optimiser states were saved in."""
    groups, grouped = [], set()
    for content in content_fields.values():
        encoder = content.encoder
        if encoder.trainable_backbone and encoder.learning_rate is not None:
            params = [p for p in encoder.backbone.parameters() if p.requires_grad]
            groups.append({"params": params, "lr": encoder.learning_rate})
            grouped.update(map(id, params))
    weights = [p for p in balancer.parameters() if p.requires_grad]
    if weights:
        groups.append({"params": weights, "lr": balancer.learning_rate or learning_rate, "weight_decay": 0.0})
        grouped.update(map(id, weights))
    rest = [p for p in module.parameters() if p.requires_grad and id(p) not in grouped]
    return [{"params": rest}, *groups]


def adam(module: nn.Module, content_fields: dict[str, ContentField], balancer: LossBalancer, learning_rate: float,
         weight_decay: float) -> torch.optim.Optimizer:
    """Adam over :func:`parameter_groups`; fused: one kernel over all parameters instead of ~6 per tensor."""
    return torch.optim.Adam(parameter_groups(module, content_fields, balancer, learning_rate), lr=learning_rate,
                            weight_decay=weight_decay, fused=True)
