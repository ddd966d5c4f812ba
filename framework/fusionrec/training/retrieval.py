"""The retrieval task's loss: a softmax over candidate items for each positive (user, item) example.

R = examples (a batch's positive rows; with ``next_item``, every present position of their
histories), C = candidate items, D = the towers' width, I = catalogue items.

- ``sampled_softmax``: the candidates are the batch's target items (each once) plus ``negatives``
  uniform draws from the catalogue. With ``log_q``, each candidate's logit is lowered by the log of
  its expected count among the candidates, ``R * p_i + negatives / I`` with ``p_i`` its share of the
  training positives (Yi et al., RecSys 2019): in-batch negatives are drawn by popularity, and
  without it the softmax learns to push popular items down.
- ``full_softmax``: every catalogue item is a candidate, each step (no sampling, no correction).
- ``exclude_positives``: a candidate the example's user has a training positive with, other than
  the example's own target, is masked out rather than counted as a negative.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusionrec.components import SequenceEncoder
from fusionrec.components.retrieval import RetrievalHead, RetrievalModel
from fusionrec.data.batches import Batch
from fusionrec.data.retrieval import RetrievalCatalogue
from fusionrec.errors import ConfigError


class RetrievalObjective:
    """``objective(batch, split) -> loss`` (None when the batch has no positive example)."""

    def __init__(self, model: RetrievalModel, task: str, head: RetrievalHead, catalogue: RetrievalCatalogue):
        self.model, self.task, self.head, self.catalogue = model, task, head, catalogue
        counts = catalogue.counts
        self.log_share = torch.log(counts.clamp(min=1) / counts.sum().clamp(min=1))  # [I]
        self.item_of_id = (next_item_targets(next_item_history(model, task, head), catalogue) if head.next_item
                           else None)

    def __call__(self, batch: Batch, split: str) -> Tensor | None:
        device = batch.labels[self.task].device
        if self.log_share.device != device:
            self.catalogue, self.log_share = self.catalogue.to(device), self.log_share.to(device)
            self.item_of_id = None if self.item_of_id is None else self.item_of_id.to(device)
        users, targets, examples = self._examples(batch, split)
        if not len(targets):
            return None
        if self.head.loss_kind == "full_softmax":
            candidates = torch.arange(len(self.catalogue), device=device)
        else:
            drawn = torch.randint(len(self.catalogue), (self.head.negatives,), device=device)
            candidates = torch.unique(torch.cat([targets, drawn]))  # sorted
        items = self.model.encode_items(self.catalogue.features(candidates, device))  # [C, D]
        logits = self.model.score(users, items)  # [R, C]
        if self.head.loss_kind == "sampled_softmax" and self.head.log_q:
            expected = len(targets) * self.log_share[candidates].exp() + self.head.negatives / len(self.catalogue)
            logits = logits - expected.log()
        columns = torch.searchsorted(candidates, targets)  # [R]
        if self.head.exclude_positives:
            other_positives = self.catalogue.other_positives(examples, targets, candidates)
            logits = logits.masked_fill(other_positives, torch.finfo(logits.dtype).min)
        return self.head.loss(logits, columns)

    def _examples(self, batch: Batch, split: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(user vectors [R, D], target items [R], user numbers [R])`` of the batch's examples."""
        catalogue = self.catalogue
        positive = batch.labels[self.task] > 0.5
        if self.task in batch.label_rows:
            positive &= batch.label_rows[self.task]
        targets = torch.where(positive, catalogue.item_rows[split][batch.index], -1)  # [B]; -1: not an example
        user_numbers = catalogue.user_codes[split][batch.index]  # [B]
        if self.item_of_id is None or split != "train":
            keep = targets >= 0
            return self.model.encode_users(batch.features)[keep], targets[keep], user_numbers[keep]
        # Next item: a few rows hold each user's sequence (RetrievalCatalogue.sequence_ends); every
        # position of their histories is an example.
        rows = positive & catalogue.sequence_ends[batch.index]
        features = {name: batch.features[name][rows] for name in self.model.user_fields}
        history = self.head.next_item
        users, present = self.model.encode_user_positions(features, history)  # [R', L, D], Bool[R', L]
        ids = features[history][..., 0]  # [R', L]
        # Position l's target is element l+1; the last position's, the row's own item.
        position_targets = torch.cat([self.item_of_id[ids[:, 1:]], targets[rows].unsqueeze(1)], dim=1)  # [R', L]
        keep = position_targets >= 0
        keep[:, :-1] &= present[:, :-1]
        return users[keep], position_targets[keep], user_numbers[rows].unsqueeze(1).expand_as(ids)[keep]


def next_item_history(model: RetrievalModel, task: str, head: RetrievalHead) -> SequenceEncoder:
    """The encoder of ``next_item``'s history, checked: a user-side field whose encoder encodes every
    prefix, whose elements share an item-side id feature's vocabulary (so each is a catalogue item)."""
    key, history = f"model.tasks.{task}.next_item", head.next_item
    if history not in model.user_fields:
        raise ConfigError(f"{key}: '{history}' is not a user-side field of model.retrieval.user.fields "
                          f"({', '.join(model.user_fields)})")
    content = sorted(set(model.user_fields) & set(model.content_fields()))
    if content:
        raise ConfigError(f"{key}: next-item training reads a few rows of each batch, which content fields' batches "
                          f"cannot be cut to; the user side has {', '.join(content)}")
    others = [name for name in model.user_fields if name != history and isinstance(model.encoders[name], SequenceEncoder)]
    if others:  # they are read whole at every position: an early position would see later elements
        raise ConfigError(f"{key}: the user side has another history ({', '.join(others)}), which every position of "
                          f"'{history}' would read whole, later elements included; train without next_item, or "
                          f"drop it from model.retrieval.user.fields")
    encoder = model.encoders[history]
    if not isinstance(encoder, SequenceEncoder) or not encoder.encodes_positions:
        raise ConfigError(f"{key}: '{history}' must be a history whose encoder encodes every prefix "
                          f"(sequence_mean, or sasrec with readout: last); it is encoded by {type(encoder).__name__}")
    shares = encoder.parts[0].get("shares")
    if shares not in model.item_fields:
        raise ConfigError(f"{key}: the elements of '{history}' must share the vocabulary of an item-side id "
                          f"feature (data.features.{history}.vocabulary), so that each is a catalogue item; "
                          f"it shares {shares or 'none'}")
    return encoder


def next_item_targets(encoder: SequenceEncoder, catalogue: RetrievalCatalogue) -> Tensor:
    """``[V]``: the catalogue item of each id of the history's vocabulary (-1: padding, or an id several
    catalogue items share, such as the out-of-vocabulary id)."""
    ids = catalogue.features(torch.arange(len(catalogue)))[encoder.parts[0]["shares"]]  # [I]
    cardinality = encoder.parts[0]["cardinality"]
    item_of_id = torch.full((cardinality,), -1, dtype=torch.long)
    item_of_id[ids] = torch.arange(len(catalogue))
    item_of_id[torch.bincount(ids, minlength=cardinality) > 1] = -1
    item_of_id[0] = -1  # padding
    return item_of_id
