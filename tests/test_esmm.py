"""Conditional tasks the ESMM way: pCTCVR = pCTR x pCVR over every impression, parents first."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import small_config, write_config
from fusionrec.cli import main
from fusionrec.components import FieldInfo
from fusionrec.data.preprocessing import Preprocessor
from fusionrec.data.schema import parse_features, parse_tasks
from fusionrec.errors import ConfigError, DataError
from fusionrec.models.multitask import MultiTaskModel
from fusionrec.plugins import get_registry

ESMM_TASKS = {"like": {"head": "esmm", "parent": "click"}, "click": {"head": "binary"}}  # child listed first


def esmm_head(input_dim: int = 8):
    return get_registry().build("heads", "esmm", "test", input_dim, {"threshold": None}, parent="click")


def test_the_served_score_is_the_product_of_the_two_towers():
    torch.manual_seed(0)
    head, parent_logit = esmm_head(), torch.randn(6)
    output = head(torch.randn(6, 8), parent_logit)
    assert output.shape == (6, 2) and torch.equal(output[:, 0], parent_logit)
    torch.testing.assert_close(head.predict(output), torch.sigmoid(output[:, 0]) * torch.sigmoid(output[:, 1]))
    torch.testing.assert_close(head.conditional_probability(output), torch.sigmoid(output[:, 1]))


def test_the_loss_is_the_cross_entropy_of_the_product_on_every_row():
    output = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-1.0, 1.5], [0.0, 0.0]])
    target = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    p = [1 / (1 + math.exp(-a)) / (1 + math.exp(-b)) for a, b in output.tolist()]
    expected = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(1 - p[2]) + math.log(1 - p[3])) / 4
    assert esmm_head().loss(output, target).item() == pytest.approx(expected, rel=1e-6)


def test_extreme_logits_give_a_finite_loss_and_gradient():
    output = torch.tensor([[30.0, 30.0], [-1e4, 1e4], [1e4, -1e4], [-1e4, -1e4], [1e4, 1e4]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    head = esmm_head()
    loss = head.loss(output, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(output.grad).all()
    # Row 0: -log(1 - sigmoid(30)^2) = 30 - log(2) to float precision; 1 - p rounds to 0 in float32.
    assert head.loss(output[:1], target[:1]).item() == pytest.approx(30 - math.log(2), rel=1e-5)
    assert head.predict(output.detach()).tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0, 1.0], abs=1e-6)


def tiny_model(tasks: dict) -> MultiTaskModel:
    fields = {"user": FieldInfo("user", "categorical", cardinality=10)}
    specs = parse_tasks(tasks, get_registry())
    return MultiTaskModel.build(get_registry(), fields, {t: {"head": s.head, "options": s.options} for t, s in specs.items()},
                                {t: {"threshold": None} for t in specs}, embedding_dim=4, encoders={},
                                fusion={"name": "concat"}, trunk={"name": "shared_bottom", "hidden": [8]})


def test_parents_come_first_whatever_the_config_order():
    model = tiny_model({"share": {"head": "binary"}, **ESMM_TASKS})
    assert list(model.heads) == ["share", "click", "like"]
    outputs = model({"user": torch.tensor([2, 3])})
    assert torch.equal(outputs["like"][:, 0], outputs["click"])


def test_unclicked_impressions_train_both_towers():
    """The CVR tower learns on rows without a click (the CTCVR label is 0 there), and the CTR tower
    learns from the CTCVR loss too: the product is not cut from the parent."""
    torch.manual_seed(0)
    model = tiny_model(ESMM_TASKS)
    output = model({"user": torch.arange(2, 10)})["like"]
    unclicked = torch.zeros(8, 2)
    model.heads["like"].loss(output, unclicked).backward()
    for task in ("like", "click"):
        grads = [p.grad for p in model.heads[task].parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, task


def test_cvr_auc_counts_only_the_rows_with_a_click():
    # pCTR = 0.5 everywhere, so pCTCVR ranks the rows as pCVR does.
    pcvr = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.99, 0.1])
    output = torch.stack([torch.zeros(6), torch.logit(pcvr)], -1)
    target = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1], [0, 0], [0, 0]], dtype=torch.float32)
    head = esmm_head()
    metrics = torch.nn.ModuleDict(head.metrics())
    head.update_metrics(metrics, output, target)
    # Clicked rows: positives 0.9, 0.4 against negatives 0.2, 0.6: 3 of 4 pairs ordered right.
    assert metrics["cvr_auc"].compute().item() == pytest.approx(3 / 4)
    # Every row: the unclicked 0.99 outranks both positives, 0.1 ranks below them: 5 of 8 pairs.
    assert metrics["ctcvr_auc"].compute().item() == pytest.approx(5 / 8)
    p = (0.5 * pcvr).tolist()
    expected = -(math.log(p[0]) + math.log(p[3]) + sum(math.log(1 - p[i]) for i in (1, 2, 4, 5))) / 6
    assert metrics["ctcvr_logloss"].compute().item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tasks, message", [
    ({"like": {"head": "esmm", "parent": "clicks"}, "click": {"head": "binary"}},
     "model.tasks.like.parent: no task named 'clicks'; tasks: like, click"),
    ({"like": {"head": "esmm", "parent": "like"}, "click": {"head": "binary"}},
     "model.tasks.like.parent: a task cannot be its own parent; tasks: like, click"),
    ({"a": {"head": "esmm", "parent": "b"}, "b": {"head": "esmm", "parent": "a"}},
     "the parents form a cycle, a -> b -> a; tasks: a, b"),
    ({"like": {"head": "esmm", "parent": "minutes"}, "minutes": {"head": "regression"}},
     "model.tasks.like.parent: task 'minutes' has a 'regression' head; a conditional task's parent needs a 'binary' head"),
    ({"like": {"head": "esmm"}}, "model.tasks.like: missing required option(s) 'parent'"),
    ({"like": {"head": "binary", "parent": "click"}, "click": {"head": "binary"}},
     "model.tasks.like: unknown option(s) 'parent' for 'BinaryHead'"),
])
def test_a_bad_parent_is_a_config_error_naming_the_key(tasks, message):
    with pytest.raises(ConfigError) as error:
        parse_tasks(tasks, get_registry())
    assert message in str(error.value)


def test_a_conversion_without_a_click_is_a_data_error_naming_the_file_and_column():
    frame = pd.DataFrame({"user": [1, 2, 3, 4, 5], "clicked": [1, 0, 1, 0, 0], "liked": [1, 1, 0, 0, 1]})
    frame.attrs["source"] = "log.csv"
    registry = get_registry()
    tasks = parse_tasks({"click": {"head": "binary", "label": "clicked"},
                         "like": {"head": "esmm", "label": "liked", "parent": "click"}}, registry)
    preprocessor = Preprocessor.fit(frame, parse_features({"user": {"type": "categorical"}}), tasks, registry)
    with pytest.raises(DataError) as error:
        preprocessor.transform(frame, registry)
    assert str(error.value) == ("log.csv, column 'liked' (task 'like'): label 1 at row 1 is positive where the parent "
                                "task 'click' (column 'clicked') is 0, in 2 row(s); a conditional label counts the "
                                "rows where both events happened")
    assert preprocessor.transform(frame.assign(liked=frame["liked"] * frame["clicked"]), registry).num_rows == 5


def test_fit_through_the_cli_logs_ctcvr_and_cvr_metrics_and_reloads(tmp_path):
    config = small_config(trainer={"max_epochs": 2, "logger": True, "enable_checkpointing": True})
    config["model"]["tasks"] = ESMM_TASKS
    path = write_config(tmp_path, config)
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    logged = pd.read_csv(run / "metrics.csv")
    for column in ("val/like/ctcvr_auc", "val/like/ctcvr_logloss", "val/like/cvr_auc", "val/click/auc"):
        assert np.isfinite(logged[column].dropna()).all() and len(logged[column].dropna()), column
    # Like-given-click is learnable in the generated log (0.52 after one epoch, 0.68 after two, 0.74 after four).
    assert logged["val/like/cvr_auc"].dropna().iloc[-1] > 0.6
    (checkpoint,) = (run / "checkpoints").glob("epoch=*.ckpt")
    loaded = torch.load(checkpoint, weights_only=True)
    assert loaded["hyper_parameters"]["preprocessing"]["tasks"]["like"]["parent"] == "click"
    assert [k.split(".")[2] for k in loaded["state_dict"] if k.startswith("model.heads.")][0] == "click"
