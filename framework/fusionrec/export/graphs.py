"""The graphs a bundle holds, and how each is written as a torch.export program and an ONNX graph.

- :class:`ScoringGraph` (``model.pt2``/``model.onnx``): ``{input: [B, ...]} -> {task: served score}``.
  A content field enters as its item vector ``[B, D]`` plus ``"<field>.present"`` ``Bool[B]``, so a
  service may precompute item vectors; rows without content take the model's learned missing vector.
  A sequence field enters as its ids ``Int64[B, L, P]``; a history encoder that reads the candidate
  takes the candidate's ids from the same inputs (:attr:`MultiTaskModel.targets`).
- :class:`ItemEncoderGraph` (``item_encoder.<field>.pt2``/``.onnx``, one per content field): the
  prepared content of U items (token ids, pixels, waveforms) -> item vectors ``[U, D]``.
- A retrieval model's bundle: :class:`ScoringGraph` as ``model.pt2`` (each row's user-item score, so
  ``/score`` and the golden check work as for any bundle) and :class:`TowerGraph` per side
  (``user_tower.pt2``/``item_tower.pt2`` and ``.onnx``): that side's fields ``[B, ...]`` -> ``[B, D]``,
  a content field entering as for the scoring graph, so the catalogue's vectors may be computed from
  item vectors a service keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusionrec.components.retrieval import RetrievalModel
from fusionrec.data.media import MediaBatch
from fusionrec.models.multitask import MultiTaskModel
from fusionrec.serving.bundle import present_input


def model_features(features: dict[str, Tensor], content_fields: list[str]) -> dict[str, Tensor | MediaBatch]:
    """A graph's inputs as the model reads them: each content field's item vectors ``[B, D]`` and
    ``"<field>.present"`` ``Bool[B]`` become a :class:`MediaBatch` of B items (row i reads item i), which
    the field's :class:`ContentField` reads as it reads any batch: rows without content take its missing vector."""
    presence = {present_input(name) for name in content_fields}
    batches = {name: MediaBatch({"vectors": features[name]}, features[present_input(name)],
                                torch.arange(features[name].shape[0], device=features[name].device))
               for name in content_fields if name in features}
    return {name: batches.get(name, value) for name, value in features.items() if name not in presence}


class ScoringGraph(nn.Module):
    """A multi-task model's served scores, or a retrieval model's score of each row's user and item:
    ``{input: [B, ...]} -> {task: [B] or [B, C]}``."""

    def __init__(self, model: MultiTaskModel | RetrievalModel):
        super().__init__()
        self.model = model
        self.content_fields = list(model.content_fields())

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        outputs = self.model(model_features(features, self.content_fields))
        return {task: head.predict(outputs[task]) for task, head in self.model.heads.items()}


class TowerGraph(nn.Module):
    """One side of a retrieval model: ``{input: [B, ...]}`` (``side``'s fields, content fields as for the
    scoring graph) -> ``[B, D]``."""

    def __init__(self, model: RetrievalModel, side: str):
        super().__init__()
        self.model = model
        self.content_fields = list(model.content_fields())
        self.encode = model.encode_users if side == "user" else model.encode_items

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.encode(model_features(features, self.content_fields))


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
