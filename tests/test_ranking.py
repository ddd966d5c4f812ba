"""Ranking: GAUC/NDCG/Recall/MRR against hand computation, the bpr and listwise losses, grouped
batches, and a positive-only log trained end to end with sampled negatives."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import write_config
from fusionrec.cli import main, make_cli
from fusionrec.data.batches import BatchIndices, GroupedBatchIndices, TensorTable, batch_loader
from fusionrec.data.datamodule import MultiTaskDataModule
from fusionrec.errors import ConfigError
from fusionrec_heads.metrics import GroupAUC
from fusionrec_heads.ranking import BPRHead, ListwiseHead

# Group 0: positives ranked 2nd and 4th; group 2: no positive; group 3: one row;
# group 4: the positive ranked last.
SCORES = torch.tensor([0.9, 0.8, 0.3, 0.1, 0.4, 0.6, 0.7, 0.1, 0.2, 0.3])
TARGET = torch.tensor([0, 1, 0, 1, 0, 0, 1, 1, 0, 0.])
GROUPS = torch.tensor([0, 0, 0, 0, 2, 2, 3, 4, 4, 4])


def _computed(metrics: nn.ModuleDict) -> dict[str, float]:
    return {name: float(metric.compute()) for name, metric in metrics.items()}


@pytest.mark.parametrize("shift", [0.0, -5.0])  # raw scores: negative ones rank like any others
def test_retrieval_metrics_match_hand_computation_and_skip_groups_without_positives(shift):
    head = ListwiseHead(4, {}, top_k=[2])
    metrics = nn.ModuleDict(head.metrics())
    scores = SCORES + shift
    head.update_metrics(metrics, scores[:5], TARGET[:5], GROUPS[:5])  # group 2 split across two batches
    head.update_metrics(metrics, scores[5:], TARGET[5:], GROUPS[5:])
    got = _computed(metrics)
    # Scored groups 0, 3, 4 (group 2 has no positive). Reciprocal ranks 1/2, 1, 1/3.
    assert got["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    # Top 2 holds one of group 0's two positives, group 3's one, none of group 4's.
    assert got["recall@2"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # Group 0: DCG@2 = 1/log2(3), ideal 1 + 1/log2(3).
    assert got["ndcg@2"] == pytest.approx((1 / math.log2(3) / (1 + 1 / math.log2(3)) + 1 + 0) / 3)
    # GAUC: group 0 has 1 of 4 (positive, negative) pairs in order, group 4 none (3 rows);
    # groups 2 and 3 have one class only.
    assert got["gauc"] == pytest.approx((4 * 0.25 + 3 * 0.0) / 7)


def test_gauc_counts_ties_half_and_weights_groups_by_rows():
    metric = GroupAUC()
    # Group 7: positive tied with one negative, above the other: (0.5 + 1) / 2. Group 9: perfect.
    metric.update(torch.tensor([0.5, 0.5, 0.2, 3.0, 1.0]), torch.tensor([1, 0, 0, 1, 0]),
                  torch.tensor([7, 7, 7, 9, 9]))
    assert float(metric.compute()) == pytest.approx((3 * 0.75 + 2 * 1.0) / 5)


def test_gauc_without_a_group_of_both_classes_is_nan_not_an_error():
    metric = GroupAUC()
    metric.update(torch.tensor([0.5, 0.1]), torch.tensor([1, 1]), torch.tensor([0, 0]))
    assert math.isnan(float(metric.compute()))


def test_bpr_loss_is_the_mean_over_ordered_pairs_within_groups():
    head = BPRHead(4, {})
    scores = torch.tensor([2.0, 1.0, 0.0, 0.5, 0.5, 4.0])
    target = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # group 1: no positive; group 2: one row
    loss = head.loss(scores, target, torch.tensor([0, 0, 0, 1, 1, 2]))
    sigmoid = torch.sigmoid
    expected = -(torch.log(sigmoid(torch.tensor(1.0))) + torch.log(sigmoid(torch.tensor(2.0)))) / 2
    assert float(loss) == pytest.approx(float(expected))


def test_listwise_loss_uses_graded_labels_normalised_within_the_group():
    head = ListwiseHead(4, {})
    scores = torch.tensor([1.0, 0.0, -1.0, 3.0, 0.2, 0.1])
    target = torch.tensor([2.0, 1.0, 0.0, 1.0, 0.0, 0.0])  # group 1: one row; group 2: no positive
    loss = head.loss(scores, target, torch.tensor([0, 0, 0, 1, 2, 2]))
    log_p = torch.log_softmax(torch.tensor([1.0, 0.0, -1.0]), 0)
    assert float(loss) == pytest.approx(float(-(2 / 3 * log_p[0] + 1 / 3 * log_p[1])))


@pytest.mark.parametrize("head_class", [ListwiseHead, BPRHead])
def test_a_gradient_step_pushes_the_positive_up(head_class):
    scores = torch.zeros(4, requires_grad=True)
    head_class(4, {}).loss(scores, torch.tensor([0.0, 1.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long)).backward()
    assert scores.grad[1] < 0 and (scores.grad[[0, 2, 3]] > 0).all()


@pytest.mark.parametrize("head_class", [ListwiseHead, BPRHead])
def test_batches_without_any_scorable_group_give_zero_loss_not_nan(head_class):
    scores = torch.tensor([0.3, 0.1, 0.5], requires_grad=True)
    loss = head_class(4, {}).loss(scores, torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))
    loss.backward()
    assert float(loss) == 0.0 and torch.isfinite(scores.grad).all()


def test_grouped_batches_keep_groups_whole_cover_every_row_once_and_shuffle_groups():
    sizes = torch.tensor([3, 1, 5, 2, 4, 2, 6, 1, 3, 3])
    groups = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    table = TensorTable({"x": torch.arange(len(groups))}, {}, len(groups), groups=groups)
    torch.manual_seed(0)
    loader = batch_loader(table, batch_size=8, shuffle=True)
    orders = []
    for _ in range(2):
        batches = list(loader)
        rows = torch.cat([batch.index for batch in batches])
        assert sorted(rows.tolist()) == list(range(len(groups)))  # every row exactly once
        for batch in batches:
            assert torch.equal(batch.groups, groups[batch.index])
            for group in batch.groups.unique():  # whole groups, contiguous
                where = (batch.groups == group).nonzero().squeeze(1)
                assert len(where) == sizes[group] and (where.diff() == 1).all()
            assert len(batch) < 8 + int(sizes.max())  # about batch_size rows
        orders.append(torch.unique_consecutive(torch.cat([b.groups for b in batches])).tolist())
    assert orders[0] != orders[1] and orders[0] != sorted(orders[0])  # shuffled, freshly each epoch
    in_order = list(batch_loader(table, batch_size=8, shuffle=False))
    assert torch.equal(torch.cat([b.index for b in in_order]), torch.arange(len(groups)))
    assert len(in_order) <= len(GroupedBatchIndices(sizes, 8, False)) == 4  # ceil(30 / 8)
    assert all(len(batches) <= 4 for batches in (list(loader), list(loader)))


def test_ungrouped_tables_keep_the_row_sampler():
    table = TensorTable({"x": torch.arange(10)}, {}, 10)
    assert isinstance(batch_loader(table, 4, True).sampler, BatchIndices)
    assert next(iter(batch_loader(table, 4, False))).groups is None


def _grouped_log(path, rows=24):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"request": rng.integers(0, 6, rows), "item": rng.integers(0, 10, rows),
                          "clicked": rng.integers(0, 2, rows)})
    frame.to_csv(path, index=False)
    return frame


def test_data_group_batches_whole_requests_numbered_across_the_split(tmp_path):
    frame = _grouped_log(tmp_path / "log.csv")
    data = MultiTaskDataModule(features={"item": {"type": "categorical"}}, tasks={"clicked": {"head": "listwise"}},
                               train=str(tmp_path / "log.csv"), group="request", batch_size=5)
    data.setup("fit")
    batches = list(data.train_dataloader())
    requests = data.splits["train"]["request"].to_numpy()
    seen = torch.cat([b.groups for b in batches])
    assert len(seen) == len(frame)
    for batch in batches:
        # one group number per request, and a request never split across batches
        assert len(set(zip(batch.groups.tolist(), requests[batch.index.numpy()]))) == len(batch.groups.unique())
    assert len(torch.unique_consecutive(seen)) == len(np.unique(requests))


def test_a_ranking_head_without_groups_is_a_config_error_naming_the_task(tmp_path):
    _grouped_log(tmp_path / "log.csv")
    with pytest.raises(ConfigError, match=r"model.tasks.clicked: .*data.group.*data.negatives"):
        MultiTaskDataModule(features={"item": {"type": "categorical"}}, tasks={"clicked": {"head": "bpr"}},
                            train=str(tmp_path / "log.csv"))


def test_top_k_is_validated(tmp_path):
    _grouped_log(tmp_path / "log.csv")
    with pytest.raises(ConfigError, match=r"model.tasks.clicked.top_k\[0\]: expected an int >= 1, got 0"):
        MultiTaskDataModule(features={"item": {"type": "categorical"}},
                            tasks={"clicked": {"head": "bpr", "top_k": [0]}}, train=str(tmp_path / "log.csv"),
                            group="request")
    data = MultiTaskDataModule(features={"item": {"type": "categorical"}},
                               tasks={"clicked": {"head": "bpr", "top_k": []}},
                               train=str(tmp_path / "log.csv"), group="request")
    with pytest.raises(ConfigError, match="top_k"):
        data.setup("fit")


# --- end to end: a positive-only log, sampled negatives, NDCG@10 above a random ranking ---

def positive_only_log(path, users=240, items=96, tastes=6, per_user=12, seed=0):
    """Each user watches mostly items of their own taste: ``user_taste == item_kind`` for 10 of 12."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        own = np.arange(user % tastes, items, tastes)
        watched = np.concatenate([rng.choice(own, per_user - 2, replace=False),
                                  rng.choice(np.setdiff1d(np.arange(items), own), 2, replace=False)])
        rows += [(user, item, user % tastes, item % tastes, rng.integers(1, 6)) for item in watched]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "user_taste", "item_kind", "rating"])
    frame.to_csv(path, index=False)
    return frame


def ranking_config(directory, head: str, **negatives) -> dict:
    positive_only_log(directory / "log.csv")
    return {
        "seed_everything": 3,
        # default_root_dir: the CLI saves the resolved config there (the working directory otherwise).
        "trainer": {"max_epochs": 4, "logger": False, "enable_checkpointing": False, "callbacks": [],
                    "default_root_dir": str(directory),
                    "enable_progress_bar": False, "enable_model_summary": False},
        "data": {"path": str(directory / "log.csv"), "split": {"method": "random", "ratios": [0.8, 0.1, 0.1]},
                 "features": {name: {"type": "categorical"} for name in ("user_id", "item_id", "user_taste", "item_kind")},
                 "negatives": {"task": "watched", "user": "user_id", "item": "item_id", "per_positive": 4,
                               "item_features": ["item_id", "item_kind"], **negatives},
                 "batch_size": 250},
        "model": {"embedding_dim": 8, "learning_rate": 0.01,
                  "trunk": {"name": "mmoe", "num_experts": 2, "expert_hidden": [32]},
                  "tasks": {"watched": {"head": head, "top_k": [10]},
                            "rating": {"head": "regression", "label": "rating"}}},
    }


# 1 positive among 5 rows at a uniformly random position.
RANDOM_NDCG = sum(1 / math.log2(rank + 1) for rank in range(1, 6)) / 5


@pytest.mark.parametrize("head", ["listwise", "bpr"])
def test_fit_on_a_positive_only_log_ranks_far_better_than_random(tmp_path, head):
    path = write_config(tmp_path, ranking_config(tmp_path, head))
    cli = make_cli(["fit", "--config", str(path)])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test/watched/ndcg@10"]) > RANDOM_NDCG + 0.2
    assert float(metrics["test/watched/gauc"]) > 0.8
    assert {"test/watched/mrr", "test/watched/recall@10", "test/rating/rmse"} <= set(metrics)


def test_bad_negatives_config_exits_with_one_line(tmp_path, capsys):
    config = ranking_config(tmp_path, "listwise", per_positive=0)
    assert main(["fit", "--config", str(write_config(tmp_path, config))]) == 2
    assert "data.negatives.per_positive" in capsys.readouterr().err


# --- per-scenario metrics (any head) ---

def test_metrics_are_reported_per_scenario_on_that_scenarios_rows(tmp_path):
    from conftest import small_config
    config = small_config(trainer={"max_epochs": 1, "callbacks": [], "default_root_dir": str(tmp_path)})
    config["data"]["generate"] = {"rows": 6000, "users": 200, "items": 150, "seed": 0}
    cli = make_cli(["fit", "--config", str(write_config(tmp_path, config))])
    metrics = cli.trainer.callback_metrics
    scenarios = cli.datamodule.splits["test"]["scenario"].value_counts()
    assert len(scenarios) > 1
    # MAE is a mean over rows: the scenarios' MAEs, weighted by their rows, give the overall one.
    pooled = sum(rows * float(metrics[f"test/watch_time/mae/{name}"]) for name, rows in scenarios.items())
    assert pooled / scenarios.sum() == pytest.approx(float(metrics["test/watch_time/mae"]), rel=1e-4)
    assert {f"test/click/auc/{name}" for name in scenarios.index} <= set(metrics)


def test_fit_with_groups_from_the_data(tmp_path):
    """Requests of 8 impressions; clicked when the item's kind is the user's taste. Group sizes
    don't divide the batch size, so batches run over and epochs have fewer batches than len()."""
    rng = np.random.default_rng(1)
    users, kinds = rng.integers(0, 100, 600), rng.integers(0, 4, (600, 8))
    frame = pd.DataFrame({"request": np.repeat(np.arange(600), 8), "user_taste": np.repeat(users % 4, 8),
                          "item_kind": kinds.ravel()})
    frame["clicked"] = (frame["user_taste"] == frame["item_kind"]).astype(int)
    frame.sample(frac=1.0, random_state=0).to_csv(tmp_path / "requests.csv", index=False)  # requests interleaved
    config = ranking_config(tmp_path, "listwise")
    config["data"] = {"path": str(tmp_path / "requests.csv"), "split": {"method": "random", "ratios": [0.8, 0.1, 0.1]},
                      "features": {"user_taste": {"type": "categorical"}, "item_kind": {"type": "categorical"}},
                      "group": "request", "batch_size": 100}
    config["model"]["tasks"] = {"clicked": {"head": "listwise"}}
    cli = make_cli(["fit", "--config", str(write_config(tmp_path, config))])
    assert float(cli.trainer.callback_metrics["test/clicked/gauc"]) > 0.9
