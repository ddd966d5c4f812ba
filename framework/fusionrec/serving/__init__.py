"""Load an exported bundle and score raw rows without fusionrec's training stack.

    from fusionrec.serving import load
    bundle = load("bundle/")                 # the torch.export program: needs torch only
    # bundle = load_onnx("bundle/")          # the ONNX graph: needs onnxruntime and numpy only
    scores = bundle.score({"user_id": ["u7", "u9"], "item_id": [31, 4], "price": [9.5, None], ...})
    # {"click": array([...]), "watch_time": array([...])}
    bundle.recommend({"user_id": "u7", "clicked_before": [31, 4]}, k=10)  # a retrieval bundle with --items
    # {"items": [keys, best first], "scores": array([...])}

Both loaders first verify the bundle against its ``SHA256SUMS`` (every file listed, none changed, none
outside the directory) and the manifest against the graphs they load, raising :class:`BundleError`
(a ``ConfigError``) naming the file; ``verify=False`` skips the checksums, for a copy that was already
verified. ``bundle.check()`` scores the bundle's golden rows and compares them with the outputs
recorded at export: run it once after loading in a new service. Neither loader imports Lightning,
pluggy, pandas or any component plugin; each imports its runtime only when called, and each field's
feature type from the module its manifest entry's ``implementation`` names (numpy only).
"""

from __future__ import annotations

from pathlib import Path

from fusionrec.serving.bundle import Bundle, BundleError
from fusionrec.serving.features import RequestError

__all__ = ["Bundle", "BundleError", "RequestError", "load", "load_onnx"]


def load(directory: str | Path, verify: bool = True) -> Bundle:
    """The bundle in ``directory``, scoring with its ``torch.export`` program (``model.pt2``)."""
    from fusionrec.serving.program import ProgramBundle

    return ProgramBundle(directory, verify=verify)


def load_onnx(directory: str | Path, verify: bool = True) -> Bundle:
    """The bundle in ``directory``, scoring with its ONNX graph (``model.onnx``) on onnxruntime."""
    from fusionrec.serving.onnx_runtime import OnnxBundle

    return OnnxBundle(directory, verify=verify)
