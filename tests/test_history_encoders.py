"""History encoders (sequence_mean, din, sasrec): padding masked, tables shared with the id fields,
the candidate passed as the target, top-K with a per-pair history, torch.export and ONNX."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from conftest import small_config, write_config
from fastapi.testclient import TestClient

from fusionrec.cli import main
from fusionrec.components import FieldInfo, SequenceEncoder
from fusionrec.data.batches import TensorTable
from fusionrec.errors import ConfigError
from fusionrec.export.graphs import ScoringGraph, write_programs
from fusionrec.models.multitask import MultiTaskModel
from fusionrec.plugins import get_registry
from fusionrec.recommend import recommend
from fusionrec.data.keyed import Side
from fusionrec.recommend.ranker import Ranker
from fusionrec.serving import load, load_onnx
from fusionrec.serving.command import open_bundle
from fusionrec.serving.fused_score import FusedScore
from fusionrec.serving.server import create_app
from fusionrec.training.cost import model_costs

ITEMS, GENRES, USERS, LENGTH, DIM = 12, 5, 6, 5, 8
ENCODERS = {"sequence_mean": {"name": "sequence_mean"}, "din": {"name": "din"},
            "din_unnormalised": {"name": "din", "softmax": False},
            "sasrec": {"name": "sasrec", "num_heads": 2}, "sasrec_target": {"name": "sasrec", "readout": "target"}}


def sequence_info(shares: tuple[str | None, str | None] = ("item_id", "genre"), length: int = LENGTH) -> FieldInfo:
    parts = [{"name": "item_id", "cardinality": ITEMS, "shares": shares[0]},
             {"name": "genre", "cardinality": GENRES, "shares": shares[1]}]
    return FieldInfo("watched", "sequence", cardinality=ITEMS, width=length, extra={"parts": parts})


def build_encoder(options: dict, length: int = LENGTH) -> SequenceEncoder:
    options = dict(options)
    torch.manual_seed(0)
    encoder = get_registry().build("encoders", options.pop("name"), "model.encoders.watched",
                                   sequence_info((None, None), length), DIM, **options)
    for table in encoder.tables.values():  # away from the near-zero init, so that a leak would show
        torch.nn.init.normal_(table.weight)
    if hasattr(encoder, "gate"):  # sasrec's output gate starts at 0 (silent until trained)
        torch.nn.init.constant_(encoder.gate, 1.0)
    return encoder.eval()


def histories(length: int = LENGTH) -> torch.Tensor:
    """``Long[4, length, 2]`` left-padded: 3 elements, a full history, an empty one, 1 element."""
    rows = [[(3, 2), (7, 4), (5, 2)], [(2 + i % 9, 2 + i % 3) for i in range(length)], [], [(9, 3)]]
    history = torch.zeros(len(rows), length, 2, dtype=torch.long)
    for row, elements in enumerate(rows):
        if elements:
            history[row, length - len(elements):] = torch.tensor(elements[-length:])
    return history


TARGET = torch.tensor([[4, 3], [5, 2], [6, 4], [9, 3]])


@pytest.mark.parametrize("options", ENCODERS.values(), ids=ENCODERS.keys())
def test_padding_never_reaches_the_output_and_an_empty_history_encodes_as_zeros(options):
    encoder = build_encoder(options)
    history = histories()
    with torch.no_grad():
        expected = encoder(history, TARGET)
        assert expected.shape == (4, DIM) and torch.isfinite(expected).all()
        torch.testing.assert_close(expected[2], torch.zeros(DIM))
        padded = history[..., 0] == 0
        noisy = history.clone()
        noisy[..., 1] = torch.where(padded, torch.randint(2, GENRES, padded.shape), noisy[..., 1])  # side ids
        for table in encoder.tables.values():
            table.weight[0] = 1e6
        torch.testing.assert_close(encoder(noisy, TARGET), expected)


@pytest.mark.parametrize("name", ["sequence_mean", "din", "din_unnormalised", "sasrec", "sasrec_target"])
def test_a_history_encodes_the_same_whatever_padding_precedes_it(name):
    short, long = build_encoder(ENCODERS[name], LENGTH), build_encoder(ENCODERS[name], LENGTH + 7)
    weights = short.state_dict()
    if name.startswith("sasrec"):  # recency 0 is the most recent element at any length; the rest is never read
        long.recency.weight.data[:LENGTH] = weights.pop("recency.weight")
    long.load_state_dict(weights, strict=False)
    history = histories()
    wider = torch.cat([torch.zeros(4, 7, 2, dtype=torch.long), history], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(long(wider, TARGET), short(history, TARGET))


def test_mean_is_the_mean_of_the_present_elements_embeddings():
    encoder = build_encoder(ENCODERS["sequence_mean"])
    item, genre = encoder.tables["0"].weight, encoder.tables["1"].weight
    with torch.no_grad():
        output = encoder(histories(), None)
        torch.testing.assert_close(output[0], (item[[3, 7, 5]] + genre[[2, 4, 2]]).mean(0))
        torch.testing.assert_close(output[3], item[9] + genre[3])


def test_din_weights_are_normalised_unless_softmax_is_off():
    """Softmax (the default, as the released code): a history of the same item twice reads as once;
    unnormalised (the paper): it weighs twice. Either way the candidate changes the output."""
    once, twice = torch.zeros(1, LENGTH, 2, dtype=torch.long), torch.zeros(1, LENGTH, 2, dtype=torch.long)
    once[0, -1] = torch.tensor([4, 2])
    twice[0, -2:] = torch.tensor([4, 2])
    target = torch.tensor([[6, 3]])
    with torch.no_grad():
        din = build_encoder(ENCODERS["din_unnormalised"])
        torch.testing.assert_close(din(twice, target), 2 * din(once, target))
        softmax = build_encoder(ENCODERS["din"])
        torch.testing.assert_close(softmax(twice, target), softmax(once, target))
        assert not torch.allclose(din(histories(), TARGET), din(histories(), TARGET.roll(1, 0)))


def test_sasrec_reads_the_target_only_when_read_out_by_target_attention():
    history = histories()
    with torch.no_grad():
        last = build_encoder(ENCODERS["sasrec"])
        assert not last.reads_target
        torch.testing.assert_close(last(history, None), last(history, TARGET))
        by_target = build_encoder(ENCODERS["sasrec_target"])
        assert by_target.reads_target
        assert not torch.allclose(by_target(history[:2], TARGET[:2]), by_target(history[:2], TARGET[2:]))


def test_an_untrained_sasrec_is_silent_and_its_gate_learns():
    """The output gate starts at 0 (the encoder adds nothing until trained) and gets a gradient."""
    torch.manual_seed(0)
    encoder = get_registry().build("encoders", "sasrec", "model.encoders.watched", sequence_info((None, None)), DIM)
    output = encoder(histories(), None)
    assert torch.equal(output, torch.zeros_like(output))
    (encoder(histories(), None) * torch.randn(4, DIM)).sum().backward()
    assert encoder.gate.grad is not None and encoder.gate.grad.abs() > 0


def test_sasrec_attention_is_causal():
    """Every position's output, before the read-out, is blind to the elements after it: changing the
    most recent element changes only the last position."""
    encoder = build_encoder({"name": "sasrec", "num_blocks": 2})
    states = []
    encoder.norm.register_forward_hook(lambda module, inputs, output: states.append(output))
    history = histories()[:2]
    changed = history.clone()
    changed[:, -1] = torch.tensor([11, 4])
    with torch.no_grad():
        encoder(history), encoder(changed)
    torch.testing.assert_close(states[0][:, :-1], states[1][:, :-1])
    assert not torch.allclose(states[0][:, -1], states[1][:, -1])


# --- in the model: shared tables, the candidate as target ---

FIELDS = {"user_id": FieldInfo("user_id", "categorical", cardinality=USERS),
          "item_id": FieldInfo("item_id", "categorical", cardinality=ITEMS),
          "genre": FieldInfo("genre", "categorical", cardinality=GENRES),
          "watched": sequence_info()}


def build_model(watched: dict, fields: dict[str, FieldInfo] = FIELDS, encoders: dict | None = None) -> MultiTaskModel:
    torch.manual_seed(0)
    model = MultiTaskModel.build(get_registry(), fields, {"click": {"head": "binary", "options": {}}},
                                 {"click": {"threshold": None}}, DIM, {"watched": watched, **(encoders or {})},
                                 {"name": "concat"}, {"name": "shared_bottom", "hidden": [8]})
    for parameter in model.parameters():  # away from the near-zero embedding init
        torch.nn.init.normal_(parameter, std=0.5)
    return model.eval()


def test_a_sequence_embeds_with_the_tables_of_the_features_it_shares():
    model = build_model({"name": "din"})
    watched = model.encoders["watched"]
    assert watched.tables["0"] is model.encoders["item_id"].embedding
    assert watched.tables["1"] is model.encoders["genre"].embedding
    assert model.targets == {"watched": ["item_id", "genre"]}
    assert list(model.encoders) == list(FIELDS)  # the fusion's inputs stay in config order
    features = {"user_id": torch.tensor([2, 3, 4, 5]), "item_id": TARGET[:, 0], "genre": TARGET[:, 1],
                "watched": histories()}
    with torch.no_grad():
        encoded, _ = model.encode(features)
        torch.testing.assert_close(encoded["watched"], watched(features["watched"], TARGET))
        # A user-side table alone (top-K) leaves a history read with the candidate for the pairs.
        assert "watched" not in model.encode({"watched": histories()})[0]


def test_a_shared_table_is_costed_once():
    model = build_model({"name": "din"})
    costs = model_costs(model)
    assert sum(cost.parameters for cost in costs) == sum(p.numel() for p in model.parameters())
    assert [cost.component for cost in costs if cost.is_table] == [
        f"user_id table [{USERS} x {DIM}]", f"item_id table [{ITEMS} x {DIM}]", f"genre table [{GENRES} x {DIM}]"]


def test_a_shared_table_of_another_width_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.encoders\.watched\.dim: 16, .* shares with 'item_id' is 8 wide"):
        build_model({"name": "sequence_mean", "dim": 16})
    # Without a dim the sequence takes the shared table's width.
    model = build_model({"name": "sequence_mean"}, encoders={"item_id": {"dim": 4}, "genre": {"dim": 4}})
    assert model.encoders["watched"].output_dim == 4


def test_an_encoder_reading_the_candidate_needs_shared_vocabularies():
    own = {**FIELDS, "watched": sequence_info((None, None))}
    for options in ({"name": "din"}, {"name": "sasrec", "readout": "target"}):
        with pytest.raises(ConfigError, match=r"model\.encoders\.watched: the '\w+' encoder reads the candidate.*"
                                              r"item_id, genre share none"):
            build_model(options, own)
    assert build_model({"name": "sasrec"}, own).targets == {}
    with pytest.raises(ConfigError, match=r"model\.encoders\.item_id: the 'din' encoder reads a sequence feature; "
                                          r"'item_id' is a categorical feature"):
        build_model({"name": "din"}, encoders={"item_id": {"name": "din"}})


def test_a_sequence_or_content_field_with_an_encoder_of_another_kind_is_a_config_error():
    """Not a shape error in the first batch: an id encoder would embed Long[B, L, P] or a batch's items."""
    with pytest.raises(ConfigError, match=r"model\.encoders\.watched: 'watched' \(sequence\) is a sequence feature, "
                                          r"which the 'categorical' encoder does not read; sequence encoders: .*din"):
        build_model({"name": "categorical"})
    poster = {**FIELDS, "poster": FieldInfo("poster", "image", extra={"strict": False})}
    with pytest.raises(ConfigError, match=r"model\.encoders\.poster: 'poster' \(image\) is a content feature, "
                                          r"which the 'categorical' encoder does not read; content encoders: .*image"):
        build_model({"name": "din"}, poster, encoders={"poster": {"name": "categorical"}})
    with pytest.raises(ConfigError, match=r"model\.encoders\.item_id: the 'image' encoder reads a content feature; "
                                          r"'item_id' is a categorical feature"):
        build_model({"name": "din"}, encoders={"item_id": {"name": "image", "backbone": "resnet18"}})


@pytest.mark.parametrize("name", ["sequence_mean", "din", "sasrec_target"])
def test_top_k_scores_each_pair_as_the_model_does(name):
    """The ranker's scores against the model run on every (user, item) pair's full features."""
    model = build_model(ENCODERS[name])
    holder = torch.nn.Module()
    holder.model = model
    generator = torch.Generator().manual_seed(1)
    watched = torch.randint(2, ITEMS, (USERS, LENGTH, 2), generator=generator)
    watched[..., 1] = watched[..., 1] % GENRES
    watched[:, :2][torch.arange(USERS) % 3 == 0] = 0  # some left padding
    watched[1] = 0  # an empty history
    user_ids = torch.arange(USERS)
    item_ids, genres = torch.arange(ITEMS), torch.randint(2, GENRES, (ITEMS,), generator=generator)
    users = Side(pd.DataFrame(), pd.Index([f"u{u}" for u in range(USERS)]), ["user_id", "watched"],
                 TensorTable({"user_id": user_ids, "watched": watched}, {}, USERS))
    items = Side(pd.DataFrame(), pd.Index([f"i{i}" for i in range(ITEMS)]), ["item_id", "genre"],
                 TensorTable({"item_id": item_ids, "genre": genres}, {}, ITEMS))
    ranker = Ranker(holder, FusedScore.parse({"click": 1}, "product", ["click"]), max_pairs=7)
    top = ranker.rank(users, items, np.arange(USERS), k=ITEMS)
    user, item = torch.arange(USERS).repeat_interleave(ITEMS), torch.arange(ITEMS).repeat(USERS)
    with torch.no_grad():
        outputs = model({"user_id": user_ids[user], "watched": watched[user], "item_id": item_ids[item],
                         "genre": genres[item]})
    expected = model.heads["click"].predict(outputs["click"]).view(USERS, ITEMS)
    np.testing.assert_allclose(np.take_along_axis(expected.numpy(), top.items, 1), top.fused, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top.fused, np.sort(expected.numpy(), 1)[:, ::-1], rtol=1e-5, atol=1e-6)


# --- export: torch.export and ONNX of the scoring graph, history as an input ---

def test_scoring_graph_with_a_history_exports_to_torch_export_and_onnx(tmp_path):
    """SASRec read out at the last position (the bundles below cover the other encoders), on a batch of
    another size than the example's."""
    model = build_model(ENCODERS["sasrec"])
    graph = ScoringGraph(model).eval()
    example = {"user_id": torch.tensor([2, 3, 4, 5]), "item_id": TARGET[:, 0], "genre": TARGET[:, 1],
               "watched": histories()}
    batch = torch.export.Dim("batch", min=1)
    write_programs(graph, "features", example, {key: {0: batch} for key in example}, ["click"],
                   tmp_path / "model.pt2", tmp_path / "model.onnx")
    rows = {key: value[[3, 0, 2]] for key, value in example.items()}  # another batch size, rows reordered
    with torch.no_grad():
        expected = graph(rows)["click"]
    program = torch.export.load(tmp_path / "model.pt2").module()
    torch.testing.assert_close(program(features=rows)["click"], expected)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    (served,) = session.run(["click"], {key: value.numpy() for key, value in rows.items()})
    np.testing.assert_allclose(served, expected.numpy(), rtol=1e-4, atol=1e-5)


BUNDLED = {"sequence_mean": {"name": "sequence_mean"}, "din": {"name": "din"},
           "sasrec": {"name": "sasrec", "num_blocks": 1, "num_heads": 2, "readout": "target"}}


@pytest.fixture(scope="module", params=list(BUNDLED))
def bundle(request, tmp_path_factory):
    """A bundle of a model whose click history (items and their categories, built from the log) goes
    through the encoder; its golden rows send histories as lists (null, empty, unknown ids, too long)."""
    root = tmp_path_factory.mktemp(f"history-{request.param}")
    config = small_config({"name": "shared_bottom", "hidden": [16]},
                          trainer={"max_epochs": 1, "enable_checkpointing": True})
    config["data"]["generate"] = {"rows": 3000, "users": 60, "items": 50, "seed": 0}
    features = config["data"]["features"]
    config["data"]["features"] = {name: features[name] for name in ("user_id", "item_id", "item_category")}
    config["data"]["features"]["watched"] = {
        "type": "sequence", "max_length": 6, "vocabulary": "item_id", "side": ["item_category"],
        "history": {"user": "user_id", "time": "timestamp", "item": "item_id", "positive": {"column": "click"}}}
    config["model"]["encoders"] = {"watched": BUNDLED[request.param]}
    path = write_config(root, config)
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(root),
                 "--test_after_fit", "false"]) == 0
    (checkpoint,) = root.glob("**/epoch=*.ckpt")
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(root / "bundle")]) == 0
    return root / "bundle"


def checkpoint_of(bundle):
    (checkpoint,) = bundle.parent.glob("**/epoch=*.ckpt")
    return checkpoint


@pytest.mark.parametrize("loader", [load, load_onnx], ids=["pt2", "onnx"])
def test_a_bundle_with_a_history_encoder_passes_its_check(bundle, loader):
    scoring = loader(bundle)
    scoring.check()  # golden rows through the request path, within the recorded tolerance
    (watched,) = [entry for entry in scoring.manifest["inputs"] if entry["name"] == "watched"]
    assert watched["shape"] == ["batch", 6, 2]
    golden = json.loads((bundle / "golden.json").read_text())["inputs"]
    row = next(index for index, value in enumerate(golden["watched"]) if value)  # a non-empty history
    rows = {name: [values[row]] * 3 for name, values in golden.items()}
    rows["watched"] = [golden["watched"][row], [], golden["watched"][row]]
    click = scoring.score(rows)["click"]
    assert click[0] == click[2] != click[1], "the history must reach the score"


def test_recommend_over_http_takes_the_history_as_a_list_truncated_as_in_training(bundle):
    """POST /recommend with the user's history once for all candidates: the order and scores of the
    candidates scored row by row; a history longer than max_length scores as its last max_length."""
    scoring = open_bundle(bundle, "onnx")
    golden = json.loads((bundle / "golden.json").read_text())["inputs"]
    history = [[str(item), str(item % 7)] for item in range(20, 29)]  # 9 elements, max_length 6
    user = {"user_id": golden["user_id"][0], "scenario": golden["scenario"][0], "watched": history}
    items = {"item_id": [str(item) for item in range(2, 14)], "item_category": [str(item % 5) for item in range(2, 14)]}
    rows = {**{name: [value] * 12 for name, value in user.items()}, **items}
    click = scoring.score(rows)["click"]
    truncated = scoring.score({**rows, "watched": [history[-6:]] * 12})["click"]
    np.testing.assert_array_equal(click, truncated)
    with TestClient(create_app(scoring, fused_score=FusedScore.parse({"click": 1}, "product", ["click"]))) as client:
        answer = client.post("/recommend", json={"user": user, "items": items, "k": 5, "item_key": "item_id"})
    assert answer.status_code == 200, answer.text
    best = np.argsort(-click, kind="stable")[:5]
    assert [entry["item_id"] for entry in answer.json()["items"]] == [items["item_id"][row] for row in best]
    np.testing.assert_allclose([entry["score"] for entry in answer.json()["items"]], click[best], rtol=1e-6)


def test_recommend_reads_each_users_history_from_the_users_table(bundle):
    """fusionrec recommend with a list column of histories in --users (the ids shared with --items'
    item_id): the same scores as the bundle serves for the same rows."""
    scoring = load(bundle)
    golden = json.loads((bundle / "golden.json").read_text())["inputs"]
    histories = [[["21", "1"], ["25", "0"], ["30", "2"]], [], [[str(item), "3"] for item in range(10, 19)]]
    users = pd.DataFrame({"user_id": golden["user_id"][:3], "scenario": golden["scenario"][:3], "watched": histories})
    items = pd.DataFrame({"item_id": [str(item) for item in range(2, 14)],
                          "item_category": [str(item % 5) for item in range(2, 14)]})
    users.to_parquet(bundle.parent / "users.parquet")
    items.to_parquet(bundle.parent / "items.parquet")
    top = recommend(str(checkpoint_of(bundle)), str(bundle.parent / "users.parquet"),
                    str(bundle.parent / "items.parquet"), 12, {"click": 1})
    for row, history in enumerate(histories):
        served = scoring.score({"user_id": [golden["user_id"][row]] * 12, "scenario": [golden["scenario"][row]] * 12,
                                "watched": [history] * 12, **items.to_dict("list")})["click"]
        mine = top[top["user_id"] == golden["user_id"][row]]
        expected = dict(zip(items["item_id"], served))
        np.testing.assert_allclose(mine["score"], [expected[item] for item in mine["item_id"]], rtol=1e-5, atol=1e-6)
        assert list(mine["score"]) == sorted(mine["score"], reverse=True)
