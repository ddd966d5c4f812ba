"""The base of every media encoder: a backbone over item content, then a trainable projection.

The core calls ``prepare(contents)`` for U distinct items in DataLoader workers (decoding, tokenising,
transforms: CPU work that must not run in the training step), then ``forward(prepared) -> [U, dim]``.
``encode`` alone gives the backbone's features ``[U, width]``; with a frozen backbone the core may cache
them under ``cache_identity()`` plus the content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fusionrec.components import FieldEncoder, FieldInfo, PositiveFloat, PositiveInt
from fusionrec.errors import DataError
# Why one item could not be read; becomes a ``problems`` entry, or a DataError when strict. Shared
# with the serving package, whose content preparation the image and audio encoders reuse.
from fusionrec.serving.content import ContentError as MediaProblem
from fusionrec_media.freezing import apply_mode, validate_mode



class MediaEncoder(FieldEncoder):
    """``prepare(contents) -> dict``, ``encode(dict) -> [U, width]``, ``forward(dict) -> [U, dim]``.

    Options every media encoder takes: ``mode`` and ``finetune_top`` (see ``freezing.py``; the
    projection ``Linear(width, dim)`` always trains), ``learning_rate`` (for the backbone's
    parameters, read by the core) and ``strict`` (an unreadable item raises a DataError instead of
    being reported in ``prepare()["problems"]`` and marked absent in ``prepare()["present"]``).

    Subclasses build their backbone, then call ``attach_backbone``; they implement ``prepare``,
    ``extract`` (features of every item, present or not) and ``preprocessing`` (the settings that,
    with the weights, determine the features).
    """

    name: ClassVar[str]
    backbone: nn.Module

    def __init__(self, field: FieldInfo, dim: PositiveInt, *, mode: str = "frozen",
                 finetune_top: PositiveInt | None = None, learning_rate: PositiveFloat | None = None, strict: bool = False):
        super().__init__(field, dim)
        self.key = f"model.encoders.{field.name}"
        validate_mode(mode, finetune_top, self.key)  # before a possibly slow backbone load
        self.mode = mode
        self.finetune_top = finetune_top
        self.learning_rate = learning_rate  # the core's learning rate for the backbone's parameters
        self.strict = strict

    def attach_backbone(self, backbone: nn.Module, width: int, blocks: list[nn.Module]) -> None:
        """Install ``backbone`` (features of ``width``), freeze it per ``mode`` and add the projection."""
        self.backbone = backbone
        self.backbone_width = width
        self._trainable = apply_mode(backbone, self.mode, blocks, self.finetune_top, self.key)
        self.projection = nn.Linear(width, self.output_dim)
        self.train(self.training)  # a loaded backbone may come in eval() (transformers' from_pretrained)

    @property
    def trainable_backbone(self) -> bool:
        return self.mode != "frozen"

    @contextmanager
    def frozen_parts_in_eval(self) -> Iterator[None]:
        """Frozen parts run in eval(): training must not move their BatchNorm statistics or drop out
        features of layers that never learn. Only while they run: otherwise every module's mode is
        the model's, as Lightning expects at the start of training (it warns about modules in eval)."""
        if not self.training or self._trainable == [self.backbone]:
            yield
            return
        self.backbone.eval()
        for module in self._trainable:
            module.train()
        try:
            yield
        finally:
            self.backbone.train()

    def prepare(self, contents: list) -> dict[str, Any]:
        raise NotImplementedError

    def extract(self, inputs: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def preprocessing(self) -> dict:
        raise NotImplementedError

    def serving_spec(self, assets: Path) -> dict:
        """How a bundle prepares this encoder's content: a :mod:`fusionrec.serving.content` spec; files it
        names (a tokenizer) are written under ``assets``. An encoder without one cannot be exported."""
        raise NotImplementedError(f"the '{self.name}' encoder cannot be exported: it has no serving spec")

    def encode(self, inputs: dict[str, Tensor]) -> Tensor:
        """``[U, width]`` float32 features; zeros for items that are not present, so a placeholder
        never reaches the model as if it were content."""
        with self.frozen_parts_in_eval():
            features = self.extract(inputs).float()
        return features * inputs["present"].to(features.device, features.dtype).unsqueeze(1)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable_backbone):
            features = self.encode(inputs)
        return self.projection(features)

    def cache_identity(self) -> dict:
        return {"encoder": self.name, **self.preprocessing(), "weights_sha256": state_dict_sha256(self.backbone)}

    def collect(self, contents: list, read: Callable[[Any], Any]) -> tuple[list, Tensor, list[tuple[Any, str]]]:
        """``read`` each item; an unreadable one becomes ``None`` plus a ``(content, reason)``
        problem, or a DataError naming it when the encoder is strict."""
        items, problems = [], []
        for content in contents:
            if content is None:  # no content at all: a missing modality, never an error
                items.append(None)
                continue
            try:
                items.append(read(content))
            except MediaProblem as problem:
                if self.strict:
                    raise DataError(f"field '{self.field.name}': {content!r}: {problem}") from problem
                items.append(None)
                problems.append((content, str(problem)))
        present = torch.tensor([item is not None for item in items], dtype=torch.bool)
        return items, present, problems


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over every tensor of ``module.state_dict()`` (name, dtype, shape and bytes): any change
    of weights or buffers, such as BatchNorm statistics or a mel filter bank, changes it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
