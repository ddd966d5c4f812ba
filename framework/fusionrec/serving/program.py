"""The torch.export programs of a bundle, run with torch alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from fusionrec.serving.bundle import PROGRAM, Bundle


def _structure(spec: pytree.TreeSpec) -> Any:
    """A program's inputs or outputs as the nested containers its tree spec describes (leaves numbered)."""
    return pytree.tree_unflatten(list(range(spec.num_leaves)), spec)


class ProgramBundle(Bundle):
    def load_graphs(self) -> None:
        program = torch.export.load(self.file(PROGRAM))
        _, keywords = _structure(program.call_spec.in_spec)
        self.check_graph(PROGRAM, list(keywords["features"]), outputs=list(_structure(program.call_spec.out_spec)))
        self.program = program.module()
        self.item_encoders = {}
        for field, entry in self.content_fields.items():
            encoder = torch.export.load(self.file(entry["program"]))
            _, keywords = _structure(encoder.call_spec.in_spec)
            self.check_graph(entry["program"], list(keywords["inputs"]), field=field)
            self.item_encoders[field] = encoder.module()
        self.towers = {}
        for side, entry in (self.retrieval or {}).get("towers", {}).items():
            tower = torch.export.load(self.file(entry["program"]))
            _, keywords = _structure(tower.call_spec.in_spec)
            self.check_graph(entry["program"], list(keywords["features"]), tower=side)
            self.towers[side] = tower.module()

    @torch.no_grad()
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.program(features={name: torch.from_numpy(value) for name, value in inputs.items()})
        return {task: outputs[task].numpy() for task in self.tasks}

    @torch.no_grad()
    def run_item_encoder(self, field: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.item_encoders[field](inputs={name: torch.from_numpy(value) for name, value in inputs.items()}).numpy()

    @torch.no_grad()
    def run_tower(self, side: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.towers[side](features={name: torch.from_numpy(value) for name, value in inputs.items()}).numpy()
