"""fusionrec recommend / evaluate-topk on a tiny catalogue whose right answer is known: user u clicks
exactly the items i with i % 4 == u % 4, and likes the items below 6."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import write_config
from fusionrec.cli import main
from fusionrec.data.preprocessing import Preprocessor
from fusionrec.plugins import get_registry
from fusionrec.recommend import evaluate_topk, recommend
from fusionrec.training.module import MultiTaskModule

USERS, ITEMS = 8, 12


def clicked(user: int, item: int) -> bool:
    return item % 4 == user % 4


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """(directory, checkpoint): a model fitted on every (user, item) pair of the tiny catalogue, and
    its users.parquet / items.parquet / log.parquet."""
    root = tmp_path_factory.mktemp("recommend")
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(USERS)], "user_group": [u % 4 for u in range(USERS)],
                          "age": np.linspace(20, 60, USERS)})
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(ITEMS)], "item_group": [i % 4 for i in range(ITEMS)]})
    log = pd.DataFrame([{"user_id": f"u{u}", "item_id": f"i{i}", "click": int(clicked(u, i)), "like": int(i < 6)}
                        for u in range(USERS) for i in range(ITEMS)])
    log = pd.concat([log.merge(users).merge(items)] * 8)  # 8 copies: fewer epochs, each with more steps
    users.to_parquet(root / "users.parquet")
    items.to_parquet(root / "items.parquet")
    log.to_parquet(root / "log.parquet")
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 3, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "ckpt"), "filename": "model"}}]},
        "data": {"train": str(root / "log.parquet"), "batch_size": 32,
                 "features": {"user_id": {"type": "categorical"}, "user_group": {"type": "categorical"},
                              "age": {"type": "numeric"}, "item_id": {"type": "categorical"},
                              "item_group": {"type": "categorical"}}},
        "model": {"embedding_dim": 8, "learning_rate": 0.02,
                  "trunk": {"name": "mmoe", "num_experts": 2, "expert_hidden": [32]},
                  "tasks": {"click": {"head": "binary"}, "like": {"head": "binary"}}},
    }
    path = write_config(root, config)
    assert main(["fit", "--config", str(path), "--test_after_fit", "false"]) == 0
    return root, root / "ckpt" / "model.ckpt"


def run(root, checkpoint, *extra, out="recs.parquet") -> int:
    return main(["recommend", "--ckpt", str(checkpoint), "--users", str(root / "users.parquet"),
                 "--items", str(root / "items.parquet"), "--out", str(root / out), *extra])


def test_top_k_lists_the_items_each_user_clicks(catalogue):
    root, checkpoint = catalogue
    assert run(root, checkpoint, "--k", "3", "--score", "{click: 1}") == 0
    recs = pd.read_parquet(root / "recs.parquet")
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score", "click", "like"]
    assert len(recs) == USERS * 3
    for user, rows in recs.groupby("user_id"):
        u = int(user[1:])
        assert sorted(int(item[1:]) for item in rows["item_id"]) == [i for i in range(ITEMS) if clicked(u, i)]
        assert rows["rank"].tolist() == [1, 2, 3]
        assert rows["score"].is_monotonic_decreasing
    assert recs["score"].to_numpy() == pytest.approx(recs["click"].to_numpy(), abs=1e-6)


def test_history_is_excluded(catalogue):
    root, checkpoint = catalogue
    # u0 already saw i0 and i4 (both clicked items) and i1; u1 saw nothing listed.
    pd.DataFrame({"user_id": ["u0", "u0", "u0", "stranger"], "item_id": ["i0", "i4", "i1", "i0"]}).to_parquet(
        root / "history.parquet")
    assert run(root, checkpoint, "--k", "3", "--score", "{click: 1}", "--exclude", str(root / "history.parquet"),
               out="excluded.parquet") == 0
    recs = pd.read_parquet(root / "excluded.parquet")
    mine = recs[recs["user_id"] == "u0"]
    assert mine["item_id"].iloc[0] == "i8"  # the one clicked item left
    assert not {"i0", "i4", "i1"} & set(mine["item_id"])
    others = recs[recs["user_id"] == "u4"]  # same group as u0, nothing excluded
    assert sorted(others["item_id"]) == ["i0", "i4", "i8"]


def test_product_and_sum_order_items_differently(catalogue):
    root, checkpoint = catalogue
    # like^4 dominates a product (a clicked but unliked item scores ~0), while in a sum with a small
    # weight on like the click decides: u2 clicks i2, i6, i10 and likes only i2 among them.
    score = "{click: 1, like: 4}"
    assert run(root, checkpoint, "--k", str(ITEMS), "--score", score, out="product.parquet") == 0
    assert run(root, checkpoint, "--k", str(ITEMS), "--score", "{click: 1, like: 0.1}", "--combine", "sum",
               out="sum.parquet") == 0
    product, total = pd.read_parquet(root / "product.parquet"), pd.read_parquet(root / "sum.parquet")
    assert product["score"].to_numpy() == pytest.approx((product["click"] * product["like"] ** 4).to_numpy(), rel=1e-5)
    assert total["score"].to_numpy() == pytest.approx((total["click"] + 0.1 * total["like"]).to_numpy(), rel=1e-5)
    top_product = product[product["user_id"] == "u2"]["item_id"].head(3).tolist()
    top_sum = total[total["user_id"] == "u2"]["item_id"].head(3).tolist()
    assert top_product[0] == "i2" and set(top_product) <= {f"i{i}" for i in range(6)}  # liked items first
    assert sorted(top_sum) == ["i10", "i2", "i6"]  # clicked items first


def test_output_equals_scoring_every_pair_with_the_model(catalogue):
    root, checkpoint = catalogue
    # max_pairs 10: item encodings, user blocks and pair chunks all split in uneven pieces.
    recs = recommend(str(checkpoint), str(root / "users.parquet"), str(root / "items.parquet"), ITEMS,
                     "{click: 1, like: 0.5}", max_pairs=10)
    module = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    pairs = pd.read_parquet(root / "users.parquet").merge(pd.read_parquet(root / "items.parquet"), how="cross")
    table = Preprocessor(module.hparams.preprocessing).transform(pairs, get_registry(), with_labels=False)
    with torch.no_grad():
        outputs = module(table[list(range(len(table)))].features)
    brute = pairs[["user_id", "item_id"]].assign(**{task: module.model.heads[task].predict(output).numpy()
                                                    for task, output in outputs.items()})
    merged = recs.merge(brute, on=["user_id", "item_id"], suffixes=("", "_brute"))
    assert len(merged) == USERS * ITEMS
    for task in ("click", "like"):
        assert merged[task].to_numpy() == pytest.approx(merged[f"{task}_brute"].to_numpy(), abs=1e-5)
    assert merged["score"].to_numpy() == pytest.approx((merged["click_brute"] * merged["like_brute"] ** 0.5).to_numpy(),
                                                       abs=1e-5)


def test_item_encoders_run_once_per_item_whatever_the_number_of_users(catalogue, tmp_path):
    root, checkpoint = catalogue
    rows = {"item_id": [], "user_id": []}
    original = MultiTaskModule.load_from_checkpoint

    def counting(*args, **kwargs):
        module = original(*args, **kwargs)
        for field in rows:
            module.model.encoders[field].register_forward_hook(
                lambda encoder, inputs, output, field=field: rows[field].append(len(output)))
        return module

    users = pd.read_parquet(root / "users.parquet")
    for count in (2, USERS):
        users.head(count).to_parquet(tmp_path / "users.parquet")
        for field in rows:
            rows[field].clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(MultiTaskModule, "load_from_checkpoint", counting)
            recommend(str(checkpoint), str(tmp_path / "users.parquet"), str(root / "items.parquet"), 3, "{click: 1}",
                      max_pairs=24)
        assert sum(rows["item_id"]) == ITEMS
        assert sum(rows["user_id"]) == count


def write_split(root) -> tuple[str, str]:
    """Train: each user's first clicked item; test: the other two, which the model ranks first."""
    pd.DataFrame([{"user_id": f"u{u}", "item_id": f"i{u % 4}"} for u in range(USERS)]).to_parquet(
        root / "train.parquet")
    pd.DataFrame([{"user_id": f"u{u}", "item_id": f"i{u % 4 + step}"} for u in range(USERS) for step in (4, 8)]
                 ).to_parquet(root / "test.parquet")
    return str(root / "train.parquet"), str(root / "test.parquet")


def test_evaluate_topk_scores_the_known_answer(catalogue):
    root, checkpoint = catalogue
    train, test = write_split(root)
    metrics = evaluate_topk(str(checkpoint), train, test, str(root / "users.parquet"), str(root / "items.parquet"),
                            [1, 2, 10], "{click: 1}")
    assert metrics["users"] == USERS
    assert metrics["recall@1"] == pytest.approx(0.5) and metrics["recall@2"] == pytest.approx(1.0)
    assert metrics["ndcg@2"] == pytest.approx(1.0) and metrics["ndcg@10"] == pytest.approx(1.0)
    assert metrics["coverage@2"] == pytest.approx(8 / ITEMS)  # i4..i11: the train items are excluded


def test_evaluate_topk_command_prints_and_writes_the_metrics(catalogue, capsys):
    root, checkpoint = catalogue
    train, test = write_split(root)
    assert main(["evaluate-topk", "--ckpt", str(checkpoint), "--train", train, "--test", test,
                 "--users", str(root / "users.parquet"), "--items", str(root / "items.parquet"),
                 "--score", "{click: 1}", "--k", "1", "2", "--out", str(root / "metrics.json")]) == 0
    assert "8 test users" in capsys.readouterr().out
    written = yaml.safe_load((root / "metrics.json").read_text())
    assert written["recall@2"] == pytest.approx(1.0) and written["recall@1"] == pytest.approx(0.5)


@pytest.mark.parametrize("change, message", [
    (lambda root: ["--score", "{click: 1, share: 2}"], "no task 'share'; tasks: click, like"),
    (lambda root: ["--score", "{click: {weight: 1, power: 2}}"], "--score.click: expected {weight"),
    (lambda root: ["--score", "{click: 1}", "--items", str(root / "no_group.parquet")],
     "feature 'item_group' of the model is a column of neither --users"),
    (lambda root: ["--score", "{click: 1}", "--items", str(root / "twice.parquet")],
     "twice.parquet, column 'item_id': id 'i3' appears more than once"),
    (lambda root: ["--score", "{click: 1}", "--items", str(root / "no_key.parquet")],
     "no column 'item_id'"),
])
def test_bad_input_is_one_line_and_writes_nothing(catalogue, capsys, change, message):
    root, checkpoint = catalogue
    items = pd.read_parquet(root / "items.parquet")
    items.drop(columns="item_group").to_parquet(root / "no_group.parquet")
    pd.concat([items, items.iloc[[3]]]).to_parquet(root / "twice.parquet")
    items.rename(columns={"item_id": "id"}).to_parquet(root / "no_key.parquet")
    args = ["recommend", "--ckpt", str(checkpoint), "--users", str(root / "users.parquet"),
            "--items", str(root / "items.parquet"), "--out", str(root / "bad" / "recs.parquet"), *change(root)]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("fusionrec: error:") and len(error.splitlines()) == 1
    assert message in error
    assert not (root / "bad").exists() or not list((root / "bad").iterdir())


def test_a_scenario_aware_trunk_ranks_with_each_users_scenario(catalogue, tmp_path):
    """STAR reads each row's scenario id (here the users' group): recommend must hand it over."""
    root, _ = catalogue
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["trainer"].update(max_epochs=1, callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                       "init_args": {"dirpath": str(tmp_path), "filename": "star"}}])
    config["data"]["scenario"] = "user_group"
    config["model"]["trunk"] = {"name": "star", "hidden": [16]}
    assert main(["fit", "--config", str(write_config(tmp_path, config)), "--test_after_fit", "false"]) == 0
    checkpoint = tmp_path / "star.ckpt"
    recs = recommend(str(checkpoint), str(root / "users.parquet"), str(root / "items.parquet"), ITEMS, "{click: 1}")
    module = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    pairs = pd.read_parquet(root / "users.parquet").merge(pd.read_parquet(root / "items.parquet"), how="cross")
    table = Preprocessor(module.hparams.preprocessing).transform(pairs, get_registry(), with_labels=False)
    with torch.no_grad():
        click = module.model.heads["click"].predict(module(table[list(range(len(table)))].features)["click"])
    merged = recs.merge(pairs[["user_id", "item_id"]].assign(brute=click.numpy()), on=["user_id", "item_id"])
    assert len(merged) == USERS * ITEMS
    assert merged["click"].to_numpy() == pytest.approx(merged["brute"].to_numpy(), abs=1e-5)
