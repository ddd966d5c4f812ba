"""The torch.export programs of a bundle, run with torch alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fusionrec.serving.bundle import PROGRAM, Bundle


class ProgramBundle(Bundle):
    def __init__(self, directory: str | Path):
        super().__init__(directory)
        self.program = torch.export.load(self.directory / PROGRAM).module()
        self.item_encoders = {field: torch.export.load(self.directory / entry["program"]).module()
                              for field, entry in self.content_fields.items()}

    @torch.no_grad()
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.program(features={name: torch.from_numpy(value) for name, value in inputs.items()})
        return {task: outputs[task].numpy() for task in self.tasks}

    @torch.no_grad()
    def run_item_encoder(self, field: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.item_encoders[field](inputs={name: torch.from_numpy(value) for name, value in inputs.items()}).numpy()
