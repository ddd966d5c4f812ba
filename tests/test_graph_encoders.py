"""LightGCN graph encoders: the propagation against the dense formula, the edges of the training split
(kept in checkpoints), ranking and retrieval models that train with them, their bundles, bad configs."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import SMALL_LOG, retrieval_config, small_config, write_config
from fusionrec.cli import main
from fusionrec.components import FieldInfo
from fusionrec.data.synthetic import generate_impressions
from fusionrec.serving import load, load_onnx
from fusionrec.training.checkpoint import load_module
from fusionrec_graph.lightgcn import LightGCNEncoder, SymmetricProduct, knn_graph

GRAPH = {"user": "user_id", "item": "item_id", "positive": {"column": "click"}}


def linked(users: int, items: int, layers: int, dim: int = 4, **item_options) -> tuple[LightGCNEncoder, LightGCNEncoder]:
    user = LightGCNEncoder(FieldInfo("user_id", "categorical", cardinality=users), dim, GRAPH, layers)
    item = LightGCNEncoder(FieldInfo("item_id", "categorical", cardinality=items), dim, GRAPH, layers, **item_options)
    user.link(item)
    return user, item


def test_propagation_is_the_layer_mean_of_the_normalised_adjacency():
    torch.manual_seed(0)
    user, item = linked(users=5, items=6, layers=2)
    # ids 0 and 1 are reserved (padding, out of vocabulary): their pairs are no edges; (2, 3) twice is one.
    users, items = torch.tensor([2, 2, 3, 4, 2, 1]), torch.tensor([3, 4, 4, 5, 3, 2])
    user.use_interactions(users, items)
    adjacency = torch.zeros(11, 11)
    for u, i in [(2, 3), (2, 4), (3, 4), (4, 5)]:
        adjacency[u, 5 + i] = adjacency[5 + i, u] = 1
    scale = adjacency.sum(1).clamp(min=1).rsqrt()
    normalised = scale[:, None] * adjacency * scale[None, :]
    layer0 = torch.cat([user.embedding.weight, item.embedding.weight]).detach()
    expected = (layer0 + normalised @ layer0 + normalised @ normalised @ layer0) / 3
    with torch.no_grad():
        torch.testing.assert_close(user(torch.arange(5)), expected[:5])
        torch.testing.assert_close(item(torch.arange(6)), expected[5:])
    # The gradients (the sparse product's own backward) are the dense formula's.
    weights = torch.randn(11, 4)
    (torch.cat([user(torch.arange(5)), item(torch.arange(6))]) * weights).sum().backward()
    dense = torch.cat([user.embedding.weight, item.embedding.weight]).detach().requires_grad_()
    ((dense + normalised @ dense + normalised @ normalised @ dense) / 3 * weights).sum().backward()
    torch.testing.assert_close(torch.cat([user.embedding.weight.grad, item.embedding.weight.grad]), dense.grad)
    # Eval mode propagates once and keeps the tables until the model trains again.
    user.eval(), item.eval()
    first = item(torch.tensor([4]))
    with torch.no_grad():
        item.embedding.weight.add_(1.0)
    torch.testing.assert_close(item(torch.tensor([4])), first)
    item.train(), item.eval()
    assert not torch.allclose(item(torch.tensor([4])), first)


def test_a_training_step_propagates_once_for_both_fields(monkeypatch):
    torch.manual_seed(0)
    user, item = linked(users=5, items=6, layers=2)
    user.use_interactions(torch.tensor([2, 3, 4]), torch.tensor([3, 4, 5]))
    calls = []
    product = SymmetricProduct.forward
    monkeypatch.setattr(SymmetricProduct, "forward", staticmethod(lambda *args: calls.append(1) or product(*args)))
    optimiser = torch.optim.SGD([user.embedding.weight, item.embedding.weight], lr=0.5)
    before = item(torch.tensor([3]))
    (user(torch.tensor([2, 3])).sum() + before.sum()).backward()
    assert len(calls) == 2  # K = 2 products: the user field reused the item field's propagation
    optimiser.step()
    optimiser.zero_grad()
    after = item(torch.tensor([3]))  # the backward dropped the step's tables: propagated afresh
    assert len(calls) == 4 and not torch.allclose(after, before)
    (user(torch.tensor([2])).sum() + after.sum()).backward()
    assert len(calls) == 4


def test_knn_graph_links_each_item_to_its_most_similar_items():
    torch.manual_seed(0)
    vectors = torch.randn(9, 3)
    present = torch.ones(9, dtype=torch.bool)
    present[5] = False  # no content: no edges either way
    edges = knn_graph(vectors, present, neighbours=2)
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    candidates = [i for i in range(2, 9) if i != 5]  # ids 0 and 1 are reserved
    expected = set()
    for item in candidates:
        others = sorted((i for i in candidates if i != item), key=lambda i: -(unit[item] @ unit[i]).item())
        expected |= {(item, other) for other in others[:2]}
    assert set(map(tuple, edges.T.tolist())) == expected
    assert knn_graph(vectors, present, neighbours=50).shape[1] == len(candidates) * (len(candidates) - 1)


def test_an_item_without_interactions_is_represented_through_its_content_neighbours():
    torch.manual_seed(0)
    user, item = linked(users=4, items=6, layers=1, content={"vector": 1.0}, neighbours=1)
    user.use_interactions(torch.tensor([2, 3]), torch.tensor([2, 3]))  # items 4 and 5: no interaction
    vectors = torch.tensor([[0.0, 0], [0, 0], [1, 0], [0, 1], [0.1, 1], [1, 0.1]])
    item.use_item_content({"vector": vectors}, {"vector": torch.ones(6, dtype=torch.bool)})
    assert set(map(tuple, item.propagation.item_edges.T.tolist())) == {(2, 5), (3, 4), (4, 3), (5, 2)}
    with torch.no_grad():
        plain = item.embedding.weight[4] / 2  # no interaction: its own embedding over K + 1
        content = torch.nn.functional.normalize(item.embedding.weight[3], dim=-1)  # its one neighbour, normalised
        torch.testing.assert_close(item(torch.tensor([4]))[0], plain + content)


def fit(root, config: dict) -> str:
    config["trainer"].update(max_epochs=1, enable_checkpointing=True, logger=True, default_root_dir=str(root))
    assert main(["fit", "--config", str(write_config(root, config)), "--test_after_fit", "false"]) == 0
    (checkpoint,) = root.glob("lightning_logs/version_0/checkpoints/epoch=*.ckpt")
    return str(checkpoint)


def with_graph(config: dict, layers: int = 2, **item_options) -> dict:
    config["model"].setdefault("encoders", {}).update(
        {field: {"name": "lightgcn", "graph": copy.deepcopy(GRAPH), "layers": layers} for field in ("user_id", "item_id")})
    config["model"]["encoders"]["item_id"].update(item_options)
    return config


@pytest.fixture(scope="module")
def ranking(tmp_path_factory):
    root = tmp_path_factory.mktemp("lightgcn")
    # The items' precomputed vectors give the item-item graph as well.
    config = with_graph(small_config(trunk={"name": "shared_bottom", "hidden": [32]}), content={"item_embedding": 1.0})
    return root, fit(root, config)


def test_the_checkpoint_keeps_the_training_splits_clicked_pairs_as_edges(ranking):
    _, checkpoint = ranking
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    edges = state["model.encoders.user_id.propagation._extra_state"]["edges"]
    log = generate_impressions(**SMALL_LOG).sort_values("timestamp", kind="stable")
    train = log.iloc[:int(len(log) * 0.8)]  # the config's time split: 80% train
    preprocessing = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]["preprocessing"]
    vocabulary = {name: {token: position + 2 for position, token in
                         enumerate(preprocessing["features"][name]["vocabulary"])} for name in ("user_id", "item_id")}
    clicked = train.loc[train["click"] == 1]
    expected = {(vocabulary["user_id"][str(u)], vocabulary["item_id"][str(i)])
                for u, i in zip(clicked["user_id"], clicked["item_id"])}
    assert set(map(tuple, edges.T.tolist())) == expected

    # Restored without the data, the model propagates over those edges.
    module = load_module(checkpoint)
    user = module.model.encoders["user_id"]
    assert user.propagation.edges.shape == edges.shape
    # Extra state, not buffers: DistributedDataParallel would broadcast every buffer at every step.
    assert not list(user.propagation.buffers())
    assert user.propagation.normalised_adjacency()._nnz() == 2 * edges.shape[1]
    items = state["model.encoders.item_id.propagation._extra_state"]["item_edges"]
    assert items.shape[1] == 10 * (module.model.encoders["item_id"].embedding.num_embeddings - 2)  # 10 neighbours each
    torch.testing.assert_close(module.model.encoders["item_id"].propagation.item_edges, items)

    # A checkpoint that still holds the graphs as buffers (fusionrec 0.1.0) loads the same graphs.
    older = {key: value for key, value in module.model.state_dict().items() if not key.endswith("_extra_state")}
    for field in ("user_id", "item_id"):
        older.update({f"encoders.{field}.propagation.{name}": value
                      for name, value in state[f"model.encoders.{field}.propagation._extra_state"].items()})
    restored = load_module(checkpoint).model
    empty = {"edges": torch.zeros(2, 0, dtype=torch.long), "item_edges": torch.zeros(2, 0, dtype=torch.long),
             "item_weights": torch.zeros(0)}
    restored.encoders["user_id"].propagation.set_extra_state(empty)
    restored.load_state_dict(older)  # strict: no key left over or missing
    torch.testing.assert_close(restored.encoders["user_id"].propagation.edges, edges)
    torch.testing.assert_close(restored.encoders["item_id"].propagation.item_edges, items)


@pytest.mark.parametrize("loader", [load, load_onnx], ids=["pt2", "onnx"])
def test_a_bundle_serves_the_propagated_tables_without_graph_code(ranking, loader):
    root, checkpoint = ranking
    bundle = root / "bundle"
    if not bundle.exists():
        assert main(["export", "--ckpt", checkpoint, "--out", str(bundle), "--skip-test-metrics"]) == 0
    loader(bundle).check()  # the golden rows, scored by the exported program, match the checkpoint


def test_retrieval_towers_read_lightgcn_ids(tmp_path):
    config = with_graph(retrieval_config())
    checkpoint = fit(tmp_path, config)
    module = load_module(checkpoint)
    tables = module.model.encoders["user_id"].propagation()
    assert tables[0].shape[0] == module.model.encoders["user_id"].embedding.num_embeddings


@pytest.mark.parametrize("change, message", [
    (lambda c: c["model"]["encoders"].pop("item_id"), "needs the item feature 'item_id' encoded by a graph encoder"),
    (lambda c: c["model"]["encoders"]["item_id"].update(layers=3), "the same layers and dim"),
    (lambda c: c["model"]["encoders"]["user_id"]["graph"].update(user="user_segment"),
     "model.encoders.user_id.graph: the field is neither the graph's user"),
    (lambda c: [e["graph"].update(positive={"column": "clicks"}) for e in c["model"]["encoders"].values()],
     "model.encoders.user_id.graph.positive.column: no column 'clicks'"),
    (lambda c: c["model"]["encoders"]["user_id"].update(graph={"user": "user_id"}), "model.encoders.user_id.graph"),
    (lambda c: c["model"]["encoders"]["user_id"].update(content={"item_embedding": 1.0}),
     "model.encoders.user_id.content: the content graph is an item-item graph"),
    (lambda c: c["model"]["encoders"]["item_id"].update(content={"item_category": 1.0}),
     "model.encoders.item_id.content: 'item_category' is not a vector feature, a multi_categorical feature"),
])
def test_bad_graph_configs_fail_with_one_line(tmp_path, capsys, change, message):
    config = with_graph(small_config())
    del config["trainer"]["enable_checkpointing"]
    config["trainer"].update(max_epochs=1, default_root_dir=str(tmp_path))
    change(config)
    assert main(["fit", "--config", str(write_config(tmp_path, config))]) == 2
    assert message in capsys.readouterr().err
