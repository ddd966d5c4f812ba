"""Retrieval: a user side and an item side encoded apart, meeting only in an inner product.

B = users (or rows), N = items, D = the towers' output width, L = a history's length.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torch.nn import functional
from torchmetrics import Metric

from fusionrec.components.head import BinaryLabels, TaskHead
from fusionrec.components.options import NonNegativeInt
from fusionrec.data.media import MediaBatch
from fusionrec.models.content import ContentField

Features = dict[str, Tensor | MediaBatch]


class RetrievalModel(nn.Module):
    """Base of every retrieval model plugin: ``(encoders, registry, **options)``.

    ``encoders``: ``{field: encoder}`` for every feature, built like the multi-task model's (a
    history sharing the item id's vocabulary embeds with the item id's table). Subclasses set
    ``user_fields`` and ``item_fields`` (every feature on exactly one side, but for a graph encoder's
    content fields, which the item graph reads at setup), ``output_dim`` (D) and
    ``temperature``, and implement the two encoders below; ``heads`` holds the retrieval tasks,
    which the training module adds.

    ``forward(features) -> {task: [B]}``: each row's (user, item) score, so that ``fusionrec predict``
    and ``test`` score a log's rows as with any model.
    """

    user_fields: list[str]
    item_fields: list[str]
    output_dim: int
    temperature: float

    def __init__(self, encoders: dict[str, nn.Module]):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.heads = nn.ModuleDict()

    def encode_users(self, features: Features) -> Tensor:
        """The user-side fields of ``features`` -> ``[B, D]``."""
        raise NotImplementedError

    def encode_items(self, features: Features) -> Tensor:
        """The item-side fields of ``features`` -> ``[N, D]``."""
        raise NotImplementedError

    def encode_user_positions(self, features: Features, history: str) -> tuple[Tensor, Tensor]:
        """``([B, L, D], Bool[B, L])``: the user vector after each element of the ``history`` field, and
        which elements are present (next-item training). Only for a history encoder that encodes every
        prefix (:attr:`SequenceEncoder.encodes_positions`)."""
        raise NotImplementedError

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """``[B, D] x [N, D] -> [B, N]``: ``<u, v> / temperature``."""
        return users @ items.T / self.temperature

    def forward(self, features: Features) -> dict[str, Tensor]:
        pair = (self.encode_users(features) * self.encode_items(features)).sum(-1) / self.temperature  # [B]
        return {task: pair for task in self.heads}

    def content_fields(self) -> dict[str, ContentField]:
        return {name: encoder for name, encoder in self.encoders.items() if isinstance(encoder, ContentField)}


class RetrievalHead(BinaryLabels, TaskHead):
    """A retrieval task: its label marks the positive rows (0/1, or ``label >= threshold``), and its
    loss is a softmax over candidate items, computed by the training module with these options:

    - ``loss``: ``sampled_softmax`` (the batch's other positives' items are the negatives, plus
      ``negatives`` items drawn uniformly from the catalogue) or ``full_softmax`` (every catalogue item
      each step; for catalogues of up to some ten thousand items);
    - ``log_q``: subtract each candidate's log sampling probability from its logit (Yi et al., RecSys
      2019), so that popular items, which are in-batch negatives more often, are not pushed down for it;
    - ``exclude_positives``: an item the user has a training positive with is never their negative;
    - ``next_item``: a history field whose encoder encodes every prefix: each element of the history is
      the target of the prefix before it, as SASRec trains (the last prefix's target is the row's item).

    It has no layers: the towers' inner product is the output. Its output and target are
    ``logits [R, C]`` and ``target [R]`` (the column of each row's positive).
    """

    score_kind = "value"

    def __init__(self, input_dim: int, label_state: dict, loss: Literal["sampled_softmax", "full_softmax"] =
                 "sampled_softmax", negatives: NonNegativeInt = 0, log_q: bool = True, exclude_positives: bool = True,
                 next_item: str | None = None, threshold: float | None = None):
        nn.Module.__init__(self)  # no tower: TaskHead's would be parameters no loss reaches
        self.label_state = label_state
        self.loss_kind, self.negatives, self.log_q = loss, int(negatives), log_q
        self.exclude_positives, self.next_item = exclude_positives, next_item

    def forward(self, h: Tensor) -> Tensor:
        return h

    def loss(self, output: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
        return functional.cross_entropy(output, target)

    def predict(self, output: Tensor) -> Tensor:
        return output

    def metrics(self) -> dict[str, Metric]:
        return {}
