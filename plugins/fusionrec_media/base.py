"""The base of the media plugin's encoders: a core :class:`~fusionrec.components.ContentEncoder` whose
backbone is frozen or fine-tuned per ``mode`` (see ``freezing.py``).

The core calls ``prepare(contents)`` for U distinct items in DataLoader workers (decoding, tokenising,
transforms through :mod:`fusionrec.serving.content`, as exported bundles do), then
``forward(prepared) -> [U, dim]``. ``encode`` alone gives the backbone's features ``[U, width]``; with a
frozen backbone the core may cache them under ``cache_identity()`` plus the content.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from torch import nn

from fusionrec.components import ContentEncoder, FieldInfo, PositiveFloat, PositiveInt
from fusionrec_media.freezing import apply_mode, validate_mode


class MediaEncoder(ContentEncoder):
    """``prepare(contents) -> dict``, ``encode(dict) -> [U, width]``, ``forward(dict) -> [U, dim]``.

    Options every media encoder takes: ``mode`` and ``finetune_top`` (see ``freezing.py``; the
    projection ``Linear(width, dim)`` always trains), ``learning_rate`` (for the backbone's
    parameters, read by the core) and ``strict`` (an unreadable item raises a DataError instead of
    being reported in ``prepare()["problems"]`` and marked absent in ``prepare()["present"]``).

    Subclasses build their backbone and ``self.preparer``, then call ``attach_backbone``; they
    implement ``extract`` (features of every item, present or not) and ``preprocessing`` (the
    settings that, with the weights, determine the features).
    """

    name: ClassVar[str]

    def __init__(self, field: FieldInfo, dim: PositiveInt, *, mode: str = "frozen",
                 finetune_top: PositiveInt | None = None, learning_rate: PositiveFloat | None = None, strict: bool = False):
        super().__init__(field, dim, learning_rate=learning_rate, strict=strict)
        validate_mode(mode, finetune_top, self.key)  # before a possibly slow backbone load
        self.mode = mode
        self.finetune_top = finetune_top

    def attach_backbone(self, backbone: nn.Module, width: int, blocks: list[nn.Module]) -> None:
        """Install ``backbone`` (features of ``width``), freeze it per ``mode`` and add the projection."""
        super().attach_backbone(backbone, width)
        self._trainable = apply_mode(backbone, self.mode, blocks, self.finetune_top, self.key)
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

    def preprocessing(self) -> dict:
        raise NotImplementedError
