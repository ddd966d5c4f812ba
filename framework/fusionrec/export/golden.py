"""Golden rows: raw inputs that exercise every encoding path, written into the bundle with the scores
the trained module gives them, so an importing service can check itself (``Bundle.check()``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionrec.features.base import FeatureType
from fusionrec.serving.content import ContentPreparer

ROWS = 8
# Content rows: distinct items, a repeated one (batches carry each item once) and a row without content.
# Row 7 repeats item 2; the bundle's golden file gives it as item 2's precomputed vector instead.
CONTENT_ITEMS = [0, 1, 2, 3, 0, 1, None, 2]
VECTOR_ROW = 7
GOLDEN_FILES = "golden"  # the image and audio files the golden rows name, relative to the bundle

# How far a runtime's float32 scores may be from the trained module's, as numpy.isclose reads it:
# |score - golden| <= atol + rtol * |golden|. The runtimes sum in other orders and fuse other kernels,
# so each score carries rounding from every layer (text, image and audio encoders included), which
# grows with the magnitude of the activations, not of the score: the multimodal quickstart's ONNX graph
# differed by up to 4.4e-6 relative (37 float32 ulps) and 6.9e-6 absolute (its regression output is
# ~1-5), the torch.export program by 4e-7; a wrong weight or encoding moves scores by orders more.
# A probability (or class distribution) is bounded by 1 and its sigmoid/softmax shrinks the logit's
# error (slope <= 1/4): 1e-5 absolute is ~84 ulps at 1. A value or ranking score is unbounded: the
# relative term scales with it, and the absolute term covers scores near 0 whose error comes from
# activations of the usual size. rtol 1e-4 is ~840 ulps; these leave 10x over the worst measured.
BOUNDED_KINDS = ("probability", "distribution")
BOUNDED_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
UNBOUNDED_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def tolerance(score_kind: str) -> dict[str, float]:
    """The golden check's tolerance for an output of ``score_kind`` (a head's ``score_kind``); a kind not
    known to be bounded is taken as unbounded."""
    return dict(BOUNDED_TOLERANCE if score_kind in BOUNDED_KINDS else UNBOUNDED_TOLERANCE)


def tabular_inputs(types: dict[str, FeatureType]) -> dict[str, list]:
    """Raw values of every field but the content ones, each type's ``example_values`` (seeded): known
    ids and an unknown one, numbers around the training mean and a missing one..."""
    rng = np.random.default_rng(0)
    return {name: kind.example_values(rng, ROWS) for name, kind in types.items() if not kind.content}


def content_items(field: str, preparer: ContentPreparer, bundle: Path) -> list[str]:
    """The distinct items ``CONTENT_ITEMS`` points at, as ``preparer`` makes examples of its kind: texts, or
    files written under ``bundle/golden`` (named relative to the bundle)."""
    count = max(item for item in CONTENT_ITEMS if item is not None) + 1
    return preparer.examples(field, bundle, GOLDEN_FILES, count)
