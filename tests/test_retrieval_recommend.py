"""fusionrec recommend / evaluate-topk with a retrieval checkpoint's towers, exact and approximate, and
retrieve-then-rank (a retrieval checkpoint's candidates ordered by a ranking checkpoint), on a small
generated log; the answers are checked against each model's own scores."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import retrieval_config, small_config, write_config
from fusionrec.cli import main
from fusionrec.components.retrieval import RetrievalModel
from fusionrec.data.preprocessing import Preprocessor
from fusionrec.data.synthetic import generate_impressions
from fusionrec.plugins import get_registry
from fusionrec.recommend import evaluate_topk, recall_against, recommend
from fusionrec.training.checkpoint import load_module
from fusionrec.training.module import MultiTaskModule

LOG = {"rows": 8000, "users": 200, "items": 150, "seed": 0}
NEWCOMER = 10_000  # a user with an empty history, unseen in training
HISTORY = {"type": "sequence", "max_length": 8, "vocabulary": "item_id",
           "history": {"user": "user_id", "time": "timestamp", "item": "item_id", "positive": {"column": "click"}}}


def fit(root, config: dict, name: str):
    config["data"]["generate"] = LOG
    config["trainer"].update(max_epochs=1, enable_checkpointing=True, callbacks=[
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(root), "filename": name}}])
    assert main(["fit", "--config", str(write_config(root, config, f"{name}.yaml")), "--test_after_fit", "false"]) == 0
    return str(root / f"{name}.ckpt")


def ranking_config() -> dict:
    """A ranking model reading the same tables: the towers' fields, the item price (which the towers
    do not read) and the clicked-items history (mean of its embeddings)."""
    config = small_config(trunk={"name": "shared_bottom", "hidden": [32]})
    features = config["data"]["features"]
    config["data"]["features"] = {name: features[name] for name in ("user_id", "item_id", "user_segment",
                                                                     "item_category", "user_age", "item_price")}
    config["data"]["features"]["clicked_before"] = HISTORY
    del config["data"]["scenario"]
    config["model"].update(encoders={"clicked_before": {"name": "sequence_mean"}},
                           tasks={"click": {"head": "binary"}, "like": {"head": "binary"}})
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Paths: the two checkpoints, users.parquet (segment, age, the last 8 clicked items; a newcomer
    with none), items.parquet (category, price), history.parquet (each user's clicks), and
    train.parquet / test.parquet (the clicks split in time)."""
    root = tmp_path_factory.mktemp("retrieval_recommend")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    towers = fit(root, retrieval_config(), "towers")
    ranker = fit(root, ranking_config(), "ranker")
    torch.set_num_threads(threads)
    log = generate_impressions(**LOG).sort_values("timestamp", kind="stable")
    clicks = log.loc[log["click"] == 1, ["user_id", "item_id"]]
    history = clicks.groupby("user_id")["item_id"].apply(lambda items: [str(item) for item in items.tail(8)])
    users = log.groupby("user_id", as_index=False).first()[["user_id", "user_segment", "user_age"]]
    users.loc[len(users)] = [NEWCOMER, 0, 30.0]
    users["clicked_before"] = [history.get(user, []) for user in users["user_id"]]
    items = log.groupby("item_id", as_index=False).first()[["item_id", "item_category", "item_price"]]
    paths = {"root": root, "towers": towers, "ranker": ranker}
    cut = len(clicks) * 4 // 5
    for name, frame in {"users": users, "items": items, "history": clicks.drop_duplicates(),
                        "train": clicks.iloc[:cut], "test": clicks.iloc[cut:]}.items():
        paths[name] = str(root / f"{name}.parquet")
        frame.to_parquet(paths[name], index=False)
    return paths


def tower_scores(world) -> pd.DataFrame:
    """``[users, items]`` scores by ``model.score(encode_users, encode_items)``, each side's features
    transformed from its table on its own (index: user ids, columns: item ids)."""
    module = load_module(world["towers"])
    model: RetrievalModel = module.model
    preprocessor = Preprocessor(module.hparams.preprocessing)
    users, items = pd.read_parquet(world["users"]), pd.read_parquet(world["items"])
    # Every feature is transformed, so each side's rows carry the other side's columns from one row.
    user_rows = users.merge(items.head(1), how="cross")
    item_rows = items.merge(users.head(1), how="cross")
    with torch.no_grad():
        u = model.encode_users(preprocessor.transform(user_rows, get_registry(), with_labels=False)[
            list(range(len(users)))].features)
        v = model.encode_items(preprocessor.transform(item_rows, get_registry(), with_labels=False)[
            list(range(len(items)))].features)
        return pd.DataFrame(model.score(u, v).numpy(), index=users["user_id"], columns=items["item_id"])


def lists(frame: pd.DataFrame) -> dict[int, list[int]]:
    return {user: rows.sort_values("rank")["item_id"].tolist() for user, rows in frame.groupby("user_id")}


def test_towers_top_k_is_the_models_own_top_k_with_the_history_excluded(world):
    k = 10
    # max_pairs 37: item vectors, user vectors and the search blocks all split in uneven pieces.
    recs = recommend(world["towers"], world["users"], world["items"], k, exclude=world["history"], max_pairs=37)
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score"]
    scores = tower_scores(world)
    seen = pd.read_parquet(world["history"])
    for user, rows in seen.groupby("user_id"):
        scores.loc[user, rows["item_id"].to_numpy()] = -np.inf
    mine = lists(recs)
    assert set(mine) == set(scores.index)  # the newcomer, with an empty history, too
    for user, row in scores.iterrows():
        expected = row.sort_values(ascending=False, kind="stable").head(k)
        assert mine[user] == expected.index.tolist()
        got = recs[recs["user_id"] == user]["score"].to_numpy()
        np.testing.assert_allclose(got, expected.to_numpy(), rtol=1e-5, atol=1e-5)
    assert not recs.merge(seen, on=["user_id", "item_id"]).size  # no seen item recommended


def test_k_beyond_the_catalogue_lists_every_item(world):
    recs = recommend(world["towers"], world["users"], world["items"], 1000)
    assert recs.groupby("user_id").size().eq(150).all()
    assert recs.groupby("user_id")["item_id"].nunique().eq(150).all()


def padded(frame: pd.DataFrame, users: list[int], k: int) -> np.ndarray:
    mine = lists(frame)
    return np.array([(mine.get(user, []) + [-1] * k)[:k] for user in users])


def test_approximate_search_returns_valid_lists_and_reports_its_recall(world, capsys):
    k = 20
    # nprobe 1 of the index's 3 lists: a third of the catalogue is searched per user, recall < 1.
    approximate = recommend(world["towers"], world["users"], world["items"], k, exclude=world["train"],
                            approximate=True, nprobe=1)
    exact = recommend(world["towers"], world["users"], world["items"], k, exclude=world["train"])
    scores = tower_scores(world)
    merged = approximate.merge(pd.read_parquet(world["train"]), on=["user_id", "item_id"], how="left", indicator=True)
    assert (merged["_merge"] == "left_only").all()  # nothing excluded comes back
    assert not approximate.duplicated(["user_id", "item_id"]).any()
    pair_scores = scores.to_numpy()[scores.index.get_indexer(approximate["user_id"]),
                                    scores.columns.get_indexer(approximate["item_id"])]
    np.testing.assert_allclose(approximate["score"], pair_scores, rtol=1e-5, atol=1e-5)  # the model's own scores
    assert (approximate.groupby("user_id")["score"].diff().dropna() <= 0).all()

    out = world["root"] / "approximate.json"
    assert main(["evaluate-topk", "--ckpt", world["towers"], "--users", world["users"], "--items", world["items"],
                 "--train", world["train"], "--test", world["test"], "--k", "10", str(k), "--approximate",
                 "--nprobe", "1", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    evaluated = sorted(pd.read_parquet(world["test"])["user_id"].unique())
    expected = recall_against(padded(exact, evaluated, k), padded(approximate, evaluated, k))
    assert 0.5 < metrics["approximate_recall"] < 1
    assert metrics["approximate_recall"] == pytest.approx(expected)
    assert f"approximate search: {expected:.4f} of the exact search's top items found" in capsys.readouterr().out
    every_list = evaluate_topk(world["towers"], world["train"], world["test"], world["users"], world["items"], [k],
                               approximate=True, nprobe=3)
    assert every_list["approximate_recall"] == 1.0


def test_retrieve_then_rank_orders_the_retrieved_candidates_by_the_rankers_score(world):
    k, candidates, score = 5, 15, "{click: 1, like: 0.5}"
    scored_rows = []
    original = MultiTaskModule.load_from_checkpoint

    def counting(*args, **kwargs):
        module = original(*args, **kwargs)
        if not isinstance(module.model, RetrievalModel):
            module.model.register_forward_hook(lambda model, inputs, output: scored_rows.append(len(output["click"])))
        return module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MultiTaskModule, "load_from_checkpoint", counting)
        recs = recommend(world["ranker"], world["users"], world["items"], k, score, exclude=world["history"],
                         max_pairs=50, retriever=world["towers"], candidates=candidates)
    users = len(pd.read_parquet(world["users"]))
    assert sum(scored_rows) == users * candidates  # only the candidate pairs, not the 150-item catalogue
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score", "click", "like"]
    retrieved = lists(recommend(world["towers"], world["users"], world["items"], candidates,
                                exclude=world["history"]))
    everything = recommend(world["ranker"], world["users"], world["items"], 150, score)  # every pair's own score
    merged = recs.merge(everything, on=["user_id", "item_id"], suffixes=("", "_own"))
    assert len(merged) == len(recs) == users * k
    np.testing.assert_allclose(merged["score"], merged["score_own"], rtol=1e-5)
    np.testing.assert_allclose(merged["score"], merged["click"] * merged["like"] ** 0.5, rtol=1e-5)
    own = everything.set_index(["user_id", "item_id"])["score"]
    for user, chosen in lists(recs).items():
        assert set(chosen) <= set(retrieved[user])
        best = sorted(retrieved[user], key=lambda item: -own[(user, item)])[:k]
        assert chosen == best


def test_evaluate_topk_measures_retrieve_then_rank_like_any_model(world):
    k, candidates, score = 10, 30, "{click: 1}"
    metrics = evaluate_topk(world["ranker"], world["train"], world["test"], world["users"], world["items"], [5, k],
                            score, retriever=world["towers"], candidates=candidates)
    recs = recommend(world["ranker"], world["users"], world["items"], k, score, exclude=world["train"],
                     retriever=world["towers"], candidates=candidates)
    test = pd.read_parquet(world["test"]).drop_duplicates()
    hits = test.merge(recs, on=["user_id", "item_id"]).groupby("user_id").size()
    relevant = test.groupby("user_id").size()
    assert metrics["users"] == len(relevant)
    assert metrics["recall@10"] == pytest.approx((hits.reindex(relevant.index, fill_value=0) / relevant).mean())
    assert set(metrics) == {"users", *(f"{name}@{cut}" for name in ("recall", "ndcg", "coverage") for cut in (5, k))}


@pytest.mark.parametrize("change, message", [
    (lambda w: ["--ckpt", w["towers"], "--items", w["no_category"]],
     "no_category.parquet has no column 'item_category', an item-side field of the retrieval model"),
    (lambda w: ["--ckpt", w["towers"], "--users", w["no_history"]],
     "no_history.parquet has no column 'clicked_before', a user-side field of the retrieval model"),
    (lambda w: ["--ckpt", w["towers"], "--items", w["empty"]], "empty.parquet has no rows"),
    (lambda w: ["--ckpt", w["ranker"]], "is a ranking checkpoint; give the fused score to rank by, e.g. "
                                         "--score '{click: 1}'"),
    (lambda w: ["--ckpt", w["towers"], "--score", "{click: 1}"], "is a retrieval checkpoint, which ranks by"),
    (lambda w: ["--ckpt", w["ranker"], "--score", "{click: 1}", "--retriever", w["towers"], "--candidates", "3"],
     "--candidates: 3 is fewer than --k 5"),
    (lambda w: ["--ckpt", w["ranker"], "--score", "{click: 1}", "--retriever", w["towers"]],
     "--candidates: give the number of candidates"),
    (lambda w: ["--ckpt", w["ranker"], "--score", "{click: 1}", "--retriever", w["ranker"], "--candidates", "9"],
     "a ranking checkpoint; --retriever takes a retrieval checkpoint"),
    (lambda w: ["--ckpt", w["ranker"], "--score", "{click: 1}", "--candidates", "9"], "--candidates: only with"),
    (lambda w: ["--ckpt", w["ranker"], "--score", "{click: 1}", "--approximate"], "has no towers"),
])
def test_bad_input_is_one_line_and_writes_nothing(world, capsys, change, message):
    root = world["root"]
    items, users = pd.read_parquet(world["items"]), pd.read_parquet(world["users"])
    for name, frame in {"no_category": items.drop(columns="item_category"), "empty": items.head(0),
                        "no_history": users.drop(columns="clicked_before")}.items():
        world.setdefault(name, str(root / f"{name}.parquet"))
        frame.to_parquet(world[name])
    args = ["recommend", "--users", world["users"], "--items", world["items"], "--k", "5",
            "--out", str(root / "bad" / "recs.parquet"), *change(world)]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("fusionrec: error:") and len(error.splitlines()) == 1
    assert message in error
    assert not (root / "bad").exists()
