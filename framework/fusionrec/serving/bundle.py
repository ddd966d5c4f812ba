"""What every bundle loader shares: the manifest, the feature encoding and the golden-row check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fusionrec.serving.features import FeatureEncoder

MANIFEST, PROGRAM, ONNX_GRAPH, GOLDEN = "manifest.json", "model.pt2", "model.onnx", "golden.json"


class Bundle:
    """A loaded bundle; subclasses run the graph: ``run({field: array}) -> {task: array}``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = json.loads((self.directory / MANIFEST).read_text())
        self.encode = FeatureEncoder(self.manifest["preprocessing"])

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["outputs"])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def score(self, rows: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """``{field: [B] raw values}`` -> ``{task: [B] (or [B, C]) served scores}``."""
        return self.run(self.encode(rows))

    def check(self, tolerance: float = 1e-5) -> None:
        """Raise if the golden rows do not score as they did at export."""
        golden = json.loads((self.directory / GOLDEN).read_text())
        scores = self.score(golden["inputs"])
        for task, expected in golden["outputs"].items():
            difference = np.abs(scores[task] - np.asarray(expected)).max()
            if not difference <= tolerance:
                raise AssertionError(f"{self.directory}: task '{task}' scores differ from the golden outputs "
                                     f"by up to {difference:.3g}")
