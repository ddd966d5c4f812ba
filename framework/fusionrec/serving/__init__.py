"""Load an exported bundle and score raw rows with torch alone (no Lightning, no pluggy, no plugins).

    from fusionrec.serving import load
    bundle = load("bundle/")
    scores = bundle.score({"user_id": ["u7", "u9"], "item_id": [31, 4], "price": [9.5, None], ...})
    # {"click": array([...]), "watch_time": array([...])}

``bundle.check()`` scores the bundle's golden rows and compares them with the outputs recorded at
export: run it once after loading in a new service.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fusionrec.serving.features import FeatureEncoder, RequestError

MANIFEST, PROGRAM, GOLDEN = "manifest.json", "model.pt2", "golden.json"

__all__ = ["ScoringBundle", "RequestError", "load"]


class ScoringBundle:
    """A bundle's scoring program with its manifest and feature encoding."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.manifest = json.loads((directory / MANIFEST).read_text())
        self.encode = FeatureEncoder(self.manifest["preprocessing"])
        self.program = torch.export.load(directory / PROGRAM).module()

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["outputs"])

    @torch.no_grad()
    def score(self, rows: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """``{field: [B] raw values}`` -> ``{task: [B] (or [B, C]) served scores}``."""
        outputs = self.program(self.encode(rows))
        return {task: outputs[task].numpy() for task in self.tasks}

    def check(self, tolerance: float = 1e-5) -> None:
        """Raise if the golden rows do not score as they did at export."""
        golden = json.loads((self.directory / GOLDEN).read_text())
        scores = self.score(golden["inputs"])
        for task, expected in golden["outputs"].items():
            if not np.allclose(scores[task], np.asarray(expected), atol=tolerance, rtol=0):
                raise AssertionError(f"{self.directory}: task '{task}' scores differ from the golden outputs "
                                     f"by up to {np.abs(scores[task] - np.asarray(expected)).max():.3g}")


def load(directory: str | Path) -> ScoringBundle:
    return ScoringBundle(Path(directory))
