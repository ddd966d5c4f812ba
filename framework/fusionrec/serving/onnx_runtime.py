"""The ONNX graph of a bundle, run with onnxruntime and numpy (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from fusionrec.serving.bundle import ONNX_GRAPH, Bundle


class OnnxBundle(Bundle):
    def __init__(self, directory: str | Path):
        super().__init__(directory)
        self.session = onnxruntime.InferenceSession(str(self.directory / ONNX_GRAPH), providers=["CPUExecutionProvider"])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.tasks, inputs)
        return dict(zip(self.tasks, outputs))
