"""The graphs a bundle holds, and how each is written as a torch.export program and an ONNX graph.

- :class:`ScoringGraph` (``model.pt2``/``model.onnx``): ``{input: [B, ...]} -> {task: served score}``.
  A content field enters as its item vector ``[B, D]`` plus ``"<field>.present"`` ``Bool[B]``, so a
  service may precompute item vectors; rows without content take the model's learned missing vector.
  A sequence field enters as its ids ``Int64[B, L, P]``; a history encoder that reads the candidate
  takes the candidate's ids from the same inputs (:attr:`MultiTaskModel.targets`).
- :class:`ItemEncoderGraph` (``item_encoder.<field>.pt2``/``.onnx``, one per content field): the
  prepared content of U items (token ids, pixels, waveforms) -> item vectors ``[U, D]``.
- A retrieval model's bundle: :class:`PairGraph` as ``model.pt2`` (each row's user-item score, so
  ``/score`` and the golden check work as for any bundle) and :class:`TowerGraph` per side
  (``user_tower.pt2``/``item_tower.pt2`` and ``.onnx``): that side's fields ``[B, ...]`` -> ``[B, D]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusionrec.components.retrieval import RetrievalModel
from fusionrec.models.multitask import MultiTaskModel
from fusionrec.serving.bundle import present_input


class ScoringGraph(nn.Module):
    def __init__(self, model: MultiTaskModel, content_fields: list[str]):
        super().__init__()
        self.model = model
        self.content_fields = list(content_fields)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        tabular = {name: value for name, value in features.items() if name in self.model.encoders
                   and name not in self.content_fields}
        present = {name: features[present_input(name)] for name in self.content_fields}  # {F: Bool[B]}
        encoded = {name: torch.where(present[name].unsqueeze(1), features[name], self.model.encoders[name].missing)
                   for name in self.content_fields}  # {F: [B, D_f]}
        outputs = self.model(tabular, encoded, present)
        return {task: head.predict(outputs[task]) for task, head in self.model.heads.items()}


class PairGraph(nn.Module):
    """A retrieval model's score of each row's user and item: ``{field: [B, ...]} -> {task: [B]}``."""

    def __init__(self, model: RetrievalModel):
        super().__init__()
        self.model = model

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        outputs = self.model(features)
        return {task: head.predict(outputs[task]) for task, head in self.model.heads.items()}


class TowerGraph(nn.Module):
    """One side of a retrieval model: ``{field: [B, ...]}`` (``side``'s fields) -> ``[B, D]``."""

    def __init__(self, model: RetrievalModel, side: str):
        super().__init__()
        self.model = model
        self.encode = model.encode_users if side == "user" else model.encode_items

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.encode(features)


class ItemEncoderGraph(nn.Module):
    """A content field's encoder (backbone + projection) alone: ``{input: [U, ...]} -> [U, D]``."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.encoder(inputs)


def write_programs(graph: nn.Module, argument: str, example: dict[str, Tensor], dynamic: dict[str, dict[int, Any]],
                   output_names: list[str], pt2: Path, onnx: Path | None) -> Any:
    """Export ``graph(**{argument: example})`` to ``pt2`` (and ``onnx`` unless None) with the ``dynamic``
    dimensions; returns the graph's output on ``example``."""
    dynamic_shapes = {argument: dynamic}
    with torch.no_grad():
        expected = graph(**{argument: example})
        program = torch.export.export(graph, (), {argument: example}, dynamic_shapes=dynamic_shapes)
    torch.export.save(program, pt2)
    if onnx is not None:
        # The dict goes in as a keyword: a trailing dict among positional arguments would be taken for
        # the keyword arguments.
        onnx_program = torch.onnx.export(graph, (), kwargs={argument: example}, dynamic_shapes=dynamic_shapes,
                                         input_names=list(example), output_names=output_names, dynamo=True)
        onnx_program.save(str(onnx))
    return expected
