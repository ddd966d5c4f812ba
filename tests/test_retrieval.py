"""Retrieval training: the two-tower model, its softmax losses (log-Q, exclusions, full softmax,
next item) checked against hand-computed values, and the configs it refuses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional

from conftest import SMALL_LOG, retrieval_config, write_config
from fusionrec.cli import main
from fusionrec.components.retrieval import RetrievalHead, RetrievalModel
from fusionrec.data.batches import Batch, TensorTable
from fusionrec.data.retrieval import RetrievalCatalogue
from fusionrec.data.synthetic import generate_impressions
from fusionrec.recommend import evaluate_topk
from fusionrec.training.checkpoint import load_module
from fusionrec.training.retrieval import RetrievalObjective


class LookupModel(RetrievalModel):
    """User and item vectors looked up by id, so that every logit can be computed by hand."""

    user_fields, item_fields, output_dim, temperature = ["user"], ["item"], 2, 0.5

    def __init__(self, users: torch.Tensor, items: torch.Tensor):
        super().__init__({})
        self.users, self.items = nn.Parameter(users), nn.Parameter(items)

    def encode_users(self, features):
        return self.users[features["user"]]

    def encode_items(self, features):
        return self.items[features["item"]]


ITEMS = 5


def catalogue(train_users: list[int], train_items: list[int]) -> RetrievalCatalogue:
    """Catalogue items 0..4, whose feature "item" is their own number: a train split that shows each
    once (label 0, an unknown user) and then the (user, item) positives, rows ITEMS, ITEMS + 1, ..."""
    frame = pd.DataFrame({"user": [-1] * ITEMS + train_users, "item": list(range(ITEMS)) + train_items})
    labels = torch.tensor([0.0] * ITEMS + [1.0] * len(train_users))
    table = TensorTable({"item": torch.tensor(frame["item"].to_numpy())}, {"task": labels}, len(frame))
    return RetrievalCatalogue.build({"train": frame}, {"train": table}, "task", "user", "item", ["item"])


def batch(positives: list[int], users: list[int], labels: list[float]) -> Batch:
    """The train rows of the given positives (0 = the first positive)."""
    return Batch({"user": torch.tensor(users)}, {"task": torch.tensor(labels)}, torch.tensor(positives) + ITEMS)


@pytest.fixture
def lookup():
    torch.manual_seed(0)
    return LookupModel(torch.randn(3, 2), torch.randn(5, 2))


def head(**options) -> RetrievalHead:
    return RetrievalHead(2, {"threshold": None}, **options)


def test_sampled_softmax_uses_the_batch_items_with_the_log_q_correction(lookup):
    # Train rows: user 0 likes items 1 and 2, user 1 item 1, user 2 item 4; item 1 is the most popular.
    known = catalogue([0, 0, 1, 2], [1, 2, 1, 4])
    objective = RetrievalObjective(lookup, "task", head(exclude_positives=False), known)
    rows = batch([0, 1, 3], [0, 0, 2], [1.0, 1.0, 0.0])  # user 0's items 1 and 2; row 3 is not a positive
    candidates = torch.tensor([1, 2])  # the positive rows' items, each once
    logits = lookup.users[[0, 0]] @ lookup.items[candidates].T / 0.5
    share = torch.tensor([2 / 4, 1 / 4])
    corrected = logits - torch.log(2 * share)  # expected count among the candidates: R * p_i
    expected = functional.cross_entropy(corrected, torch.tensor([0, 1]))
    assert objective(rows, "train").item() == pytest.approx(expected.item(), rel=1e-6)

    without = RetrievalObjective(lookup, "task", head(exclude_positives=False, log_q=False), known)
    plain = functional.cross_entropy(logits, torch.tensor([0, 1]))
    assert without(rows, "train").item() == pytest.approx(plain.item(), rel=1e-6)


def test_a_users_other_positives_are_never_their_negatives(lookup):
    known = catalogue([0, 0, 1], [1, 2, 2])
    objective = RetrievalObjective(lookup, "task", head(log_q=False, loss="full_softmax"), known)
    loss = objective(batch([0, 2], [0, 1], [1.0, 1.0]), "train")
    logits = lookup.users[[0, 1]] @ lookup.items.T / 0.5  # full softmax: all five items
    logits[0, 2] = -math.inf  # user 0's other positive (item 2) is masked; user 1 has no other
    expected = functional.cross_entropy(logits, torch.tensor([1, 2]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_extra_negatives_are_drawn_from_the_catalogue(lookup):
    known = catalogue([0, 1], [1, 1])
    objective = RetrievalObjective(lookup, "task", head(negatives=64, log_q=False), known)
    seen = []
    original = lookup.encode_items
    lookup.encode_items = lambda features: seen.append(features["item"]) or original(features)
    objective(batch([0], [0], [1.0]), "train")
    assert set(seen[0].tolist()) == {0, 1, 2, 3, 4}  # 64 uniform draws over 5 items reach them all


def test_a_batch_without_positives_gives_no_loss(lookup):
    objective = RetrievalObjective(lookup, "task", head(), catalogue([0], [1]))
    assert objective(batch([0], [0], [0.0]), "train") is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("retrieval")
    config = retrieval_config(next_item="clicked_before", negatives=32)
    config["trainer"].update(enable_checkpointing=True, logger=True, default_root_dir=str(directory))
    assert main(["fit", "--config", str(write_config(directory, config))]) == 0
    (checkpoint,) = directory.glob("lightning_logs/version_0/checkpoints/epoch=*.ckpt")
    return directory, checkpoint


def test_two_tower_trains_and_its_checkpoint_is_plain_data(trained):
    _, checkpoint = trained
    torch.load(checkpoint, weights_only=True)
    module = load_module(str(checkpoint))
    assert isinstance(module.model, RetrievalModel)
    assert module.model.user_fields == ["user_id", "user_segment", "user_age", "clicked_before"]
    assert module.component_manifest()["retrieval"]["name"] == "two_tower"


def test_next_item_training_takes_every_position_of_the_history(trained):
    _, checkpoint = trained
    module = load_module(str(checkpoint))
    history = torch.tensor([[[0], [0], [3], [5], [7], [4], [6], [9]]])  # left-padded, most recent last
    features = {"user_id": torch.tensor([2]), "user_segment": torch.tensor([2]), "user_age": torch.tensor([[0.1, 0.0]]),
                "clicked_before": history}
    module.eval()
    with torch.no_grad():
        positions, present = module.model.encode_user_positions(features, "clicked_before")
        last = module.model.encode_users(features)
    assert present.tolist() == [[False, False, True, True, True, True, True, True]]
    torch.testing.assert_close(positions[:, -1], last)  # the last position is the user's vector
    # A prefix's vector does not depend on what comes after it (causal).
    later = history.clone()
    later[0, 5:, 0] = torch.tensor([11, 12, 13])
    with torch.no_grad():
        changed, _ = module.model.encode_user_positions({**features, "clicked_before": later}, "clicked_before")
    torch.testing.assert_close(changed[:, :5], positions[:, :5])
    assert not torch.allclose(changed[:, 5:], positions[:, 5:])


def test_the_towers_rank_held_out_clicks_far_above_chance(trained):
    """The generated log's last 10% (the test split): the towers, reading each user's clicks before it,
    put the clicked items in the top 20 of 400 far more often than chance (20 / 400 = 5%)."""
    directory, checkpoint = trained
    log = generate_impressions(**SMALL_LOG).sort_values("timestamp", kind="stable")
    cut = int(len(log) * 0.9)
    before, after = log.iloc[:cut], log.iloc[cut:]
    clicks = before.loc[before["click"] == 1]
    history = clicks.groupby("user_id")["item_id"].apply(lambda items: [str(item) for item in items.tail(8)])
    users = log.groupby("user_id", as_index=False).first()[["user_id", "user_segment", "user_age"]]
    users["clicked_before"] = [history.get(user, []) for user in users["user_id"]]
    items = log.groupby("item_id", as_index=False).first()[["item_id", "item_category"]]
    tables = {"users": users, "items": items, "seen": clicks[["user_id", "item_id"]],
              "test": after.loc[after["click"] == 1, ["user_id", "item_id"]]}
    for name, frame in tables.items():
        frame.to_parquet(directory / f"{name}.parquet", index=False)
    paths = {name: str(directory / f"{name}.parquet") for name in tables}
    metrics = evaluate_topk(str(checkpoint), paths["seen"], paths["test"], paths["users"], paths["items"], [20])
    assert metrics["recall@20"] > 3 * 20 / len(items), metrics


@pytest.mark.parametrize("change, message", [
    (lambda c: c["model"]["retrieval"]["item"]["fields"].append("user_segment"),
     "user_segment is in both towers' fields"),
    (lambda c: c["model"]["retrieval"]["user"]["fields"].remove("user_age"), "user_age are in neither tower"),
    (lambda c: c["model"]["encoders"]["clicked_before"].update(name="din"), "a user tower must not read the item"),
    (lambda c: c["model"]["tasks"]["click"].update(next_item="clicked_before") or
     c["model"]["encoders"]["clicked_before"].update(readout="target"), "a user tower must not read the item"),
    (lambda c: c["model"]["tasks"]["click"].update(next_item="item_id"), "'item_id' is not a user-side field"),
    (lambda c: c["data"]["features"].update(liked_before={**c["data"]["features"]["clicked_before"]}) or
     c["model"]["retrieval"]["user"]["fields"].append("liked_before") or
     c["model"]["tasks"]["click"].update(next_item="clicked_before"), "another history (liked_before)"),
    (lambda c: c["model"]["tasks"].update(like={"head": "binary"}), "trains one task with the retrieval head"),
    (lambda c: c["model"].pop("retrieval"), "the retrieval head trains a retrieval model; set model.retrieval"),
    (lambda c: c["model"]["retrieval"].update(user_key="visitor"), "model.retrieval.user_key: no column 'visitor'"),
    (lambda c: c["model"]["retrieval"]["user"].update(tower=[3]), "unknown key(s) 'tower'"),
    (lambda c: c["model"]["retrieval"].update(temperature=0), "model.retrieval.temperature"),
])
def test_bad_retrieval_configs_fail_with_one_line(tmp_path, capsys, change, message):
    config = retrieval_config()
    del config["trainer"]["enable_checkpointing"]  # fit's default callbacks
    config["trainer"].update(max_epochs=1, default_root_dir=str(tmp_path))
    change(config)
    assert main(["fit", "--config", str(write_config(tmp_path, config))]) == 2
    assert message in capsys.readouterr().err
