"""Top-K recommendation over a catalogue and its full-ranking evaluation (``fusionrec recommend``,
``fusionrec evaluate-topk``)."""

from fusionrec.recommend.commands import evaluate_topk, recommend
from fusionrec.serving.fused_score import FusedScore
from fusionrec.recommend.metrics import topk_metrics
from fusionrec.recommend.vectors import ApproximateIndex, exact_topk, recall_against

__all__ = ["ApproximateIndex", "FusedScore", "evaluate_topk", "exact_topk", "recall_against", "recommend",
           "topk_metrics"]
