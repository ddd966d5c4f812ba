"""The torch.export program of a bundle, run with torch alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fusionrec.serving.bundle import PROGRAM, Bundle


class ProgramBundle(Bundle):
    def __init__(self, directory: str | Path):
        super().__init__(directory)
        self.program = torch.export.load(self.directory / PROGRAM).module()

    @torch.no_grad()
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.program(features={name: torch.from_numpy(value) for name, value in inputs.items()})
        return {task: outputs[task].numpy() for task in self.tasks}
