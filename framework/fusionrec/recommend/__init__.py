"""Top-K recommendation over a catalogue and its full-ranking evaluation (``fusionrec recommend``,
``fusionrec evaluate-topk``)."""

from fusionrec.recommend.commands import evaluate_topk, recommend
from fusionrec.serving.fused_score import FusedScore
from fusionrec.recommend.metrics import topk_metrics

__all__ = ["FusedScore", "evaluate_topk", "recommend", "topk_metrics"]
