"""Content encoders: the items of a content field (texts, image or audio files) in, ``[U, dim]`` out."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusionrec.components.encoder import FieldEncoder
from fusionrec.components.options import PositiveFloat, PositiveInt
from fusionrec.errors import DataError
from fusionrec.features.base import FieldInfo
from fusionrec.serving.content import ContentError, ContentPreparer


class ContentEncoder(FieldEncoder):
    """Base of every encoder of a ``text``, ``image`` or ``audio`` field: a backbone over item content,
    then a trainable projection. The model wraps it so that it runs once per distinct item of a batch.

    What the core relies on:

    - ``prepare(contents) -> dict``: for U items (``None``: no content), in the DataLoader worker that
      builds the batch: the backbone's input tensors ``[U, ...]``, ``present`` ``Bool[U]`` and
      ``problems`` ``[(content, reason)]``. The base runs ``self.preparer``, the
      :class:`fusionrec.serving.content.ContentPreparer` an exported bundle rebuilds from
      ``serving_spec``, so training and serving prepare each item alike; an unreadable item is a
      problem, or a DataError naming it when ``strict``.
    - ``encode(inputs) -> [U, backbone_width]``: the backbone's features, zeros for items not present;
      ``forward(inputs) -> [U, dim]``: ``projection(encode(inputs))``, with gradients only into a
      trainable backbone.
    - ``projection``: run alone on features cached for a frozen backbone (``trainable_backbone`` False),
      under ``cache_identity()`` plus the content.
    - ``backbone``, ``learning_rate``: the backbone's parameters form an optimiser group with this
      learning rate (``None``: the model's).

    Subclasses set ``self.preparer``, call ``attach_backbone`` and implement ``extract``.
    """

    backbone: nn.Module
    backbone_width: int
    projection: nn.Module
    preparer: ContentPreparer

    def __init__(self, field: FieldInfo, dim: PositiveInt, *, learning_rate: PositiveFloat | None = None,
                 strict: bool = False):
        super().__init__(field, dim)
        self.key = f"model.encoders.{field.name}"
        self.learning_rate = learning_rate
        self.strict = strict

    def attach_backbone(self, backbone: nn.Module, width: int) -> None:
        """Install ``backbone`` (features of ``width``) and the projection ``Linear(width, dim)``."""
        self.backbone = backbone
        self.backbone_width = width
        self.projection = nn.Linear(width, self.output_dim)

    @property
    def trainable_backbone(self) -> bool:
        return any(parameter.requires_grad for parameter in self.backbone.parameters())

    @contextmanager
    def frozen_parts_in_eval(self) -> Iterator[None]:
        """Around the backbone's run: a backbone that partly trains puts its frozen parts in eval()."""
        yield

    def prepare(self, contents: list) -> dict[str, Any]:
        try:
            prepared = self.preparer(contents, errors="raise" if self.strict else "missing")
        except ContentError as error:
            raise DataError(f"field '{self.field.name}': {error}") from None
        problems = prepared.pop("problems")
        return {**{key: torch.from_numpy(value) for key, value in prepared.items()}, "problems": problems}

    def extract(self, inputs: dict[str, Tensor]) -> Tensor:
        """The backbone's features of every item, present or not: ``[U, backbone_width]``."""
        raise NotImplementedError

    def encode(self, inputs: dict[str, Tensor]) -> Tensor:
        """``[U, backbone_width]`` float32 features; zeros for items that are not present, so a placeholder
        never reaches the model as if it were content."""
        with self.frozen_parts_in_eval():
            features = self.extract(inputs).float()
        return features * inputs["present"].to(features.device, features.dtype).unsqueeze(1)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable_backbone):
            features = self.encode(inputs)
        return self.projection(features)

    def preprocessing(self) -> dict:
        """Every setting besides the weights that changes the features (part of the cache identity)."""
        return {}

    def cache_identity(self) -> dict:
        """What determines a frozen backbone's features of an item, besides the item: the cache key."""
        return {"encoder": f"{type(self).__module__}.{type(self).__qualname__}", **self.preprocessing(),
                "weights_sha256": state_dict_sha256(self.backbone)}

    def serving_spec(self, assets: Path) -> dict:
        """How a bundle prepares this encoder's content: the preparer's spec; files it names (a tokenizer)
        are written under ``assets``. An encoder that prepares its content otherwise cannot be exported."""
        if not hasattr(self, "preparer"):
            raise NotImplementedError(f"the {type(self).__name__} encoder cannot be exported: it prepares "
                                      f"its content without a fusionrec.serving.content preparer")
        return self.preparer.spec(assets)


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over every tensor of ``module.state_dict()`` (name, dtype, shape and bytes): any change
    of weights or buffers, such as BatchNorm statistics or a mel filter bank, changes it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
