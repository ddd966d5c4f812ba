"""A full MultiTaskModel against a forward pass computed by hand, so that metric differences
against peer libraries come from training choices, never from the arithmetic.

Layout (B = 2 rows, every weight a chosen literal, no randomness):

    item  : categorical, cardinality 4, dim 2  -> embedding row lookup          [B, 2]
    price : numeric (value, missing flag), default width 2 -> as it is          [B, 2]
    concat fusion, fields in declared order (item, price)                          [B, 4]
    trunk : shared_bottom, hidden [3]     -> ReLU(W x + b)                         [B, 3]
            mmoe, 2 experts, hidden [3]   -> sum_e softmax(G_t x + g_t)_e * ReLU(W_e x + b_e)
    click : binary head, tower [2]        -> logit = o . ReLU(T h + t) + c; served sigmoid(logit)
    rating: regression head, tower []     -> z = r . h + d (standardised); served z * std + mean

The reference below is plain Python (lists, ``math.exp``), written independently of the modules;
the model runs in float32, hence the 1e-6 tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from fusionrec.components import FieldInfo
from fusionrec.models.multitask import MultiTaskModel
from fusionrec.plugins import get_registry

TOL = 1e-6

# --- inputs, labels and label state ---

FIELDS = {"item": FieldInfo("item", "categorical", cardinality=4),
          "price": FieldInfo("price", "numeric", width=2)}
ITEM_IDS = [2, 3]
PRICE = [[0.5, 0.0],   # value 0.5, present
         [0.0, 1.0]]   # missing: value 0, flag 1
CLICK = [1.0, 0.0]
RATING = [3.0, -0.5]
RATING_STATE = {"mean": 1.5, "std": 2.0}

# --- weights (Linear weights are [out, in], as in torch) ---

EMBEDDING = [[0.0, 0.0], [0.1, -0.1], [0.5, -1.0], [-0.3, 0.8]]

BOTTOM_W = [[1.0, 0.5, -0.5, 0.2], [-1.0, 0.3, 0.4, -0.1], [0.2, -0.6, 0.1, 0.5]]
BOTTOM_B = [0.05, -0.1, 0.0]

EXPERT_W = [[[0.6, -0.2, 0.3, 0.1], [-0.4, 0.5, -0.2, 0.3], [0.1, 0.1, 0.7, -0.6]],
            [[-0.5, 0.4, 0.2, 0.2], [0.3, -0.7, 0.5, 0.1], [0.2, 0.3, -0.4, 0.4]]]
EXPERT_B = [[0.0, 0.1, -0.05], [0.1, 0.0, 0.2]]
GATE_W = {"click": [[0.5, -0.5, 0.2, 0.1], [-0.3, 0.4, 0.0, 0.6]],
          "rating": [[-0.2, 0.1, 0.7, -0.4], [0.3, 0.3, -0.5, 0.2]]}
GATE_B = {"click": [0.0, 0.2], "rating": [0.1, -0.1]}

CLICK_TOWER_W, CLICK_TOWER_B = [[0.5, -0.4, 0.3], [-0.2, 0.6, 0.1]], [0.0, -0.1]
CLICK_OUT_W, CLICK_OUT_B = [[0.7, -1.2]], [0.05]
RATING_OUT_W, RATING_OUT_B = [[0.3, -0.2, 0.9]], [0.4]

# The fused rows, worked out on paper: [embedding[id] | price value, missing flag].
#   row 0: [0.5, -1.0 | 0.5, 0.0];  row 1: [-0.3, 0.8 | 0.0, 1.0]
FUSED_BY_PAPER = [[0.5, -1.0, 0.5, 0.0], [-0.3, 0.8, 0.0, 1.0]]


# --- the reference, in plain Python ---

def affine(w, b, x):
    return [sum(w_ij * x_j for w_ij, x_j in zip(row, x)) + b_i for row, b_i in zip(w, b)]


def relu(v):
    return [max(0.0, a) for a in v]


def softmax(v):
    top = max(v)
    exps = [math.exp(a - top) for a in v]
    return [e / sum(exps) for e in exps]


def reference_fused(row):
    return EMBEDDING[ITEM_IDS[row]] + PRICE[row]  # list concat: item, then price


def reference_trunk(trunk, x):
    """``{task: h}`` for one row."""
    if trunk == "shared_bottom":
        h = relu(affine(BOTTOM_W, BOTTOM_B, x))
        return {"click": h, "rating": h}
    experts = [relu(affine(w, b, x)) for w, b in zip(EXPERT_W, EXPERT_B)]
    mixed = {}
    for task in ("click", "rating"):
        g = softmax(affine(GATE_W[task], GATE_B[task], x))
        mixed[task] = [g[0] * experts[0][d] + g[1] * experts[1][d] for d in range(3)]
    return mixed


def reference(trunk):
    """Per-row click logit and standardised rating, and the served scores and losses."""
    logits, z = [], []
    for row in range(2):
        h = reference_trunk(trunk, reference_fused(row))
        logits.append(affine(CLICK_OUT_W, CLICK_OUT_B, relu(affine(CLICK_TOWER_W, CLICK_TOWER_B, h["click"])))[0])
        z.append(affine(RATING_OUT_W, RATING_OUT_B, h["rating"])[0])
    probability = [1.0 / (1.0 + math.exp(-a)) for a in logits]
    value = [a * RATING_STATE["std"] + RATING_STATE["mean"] for a in z]
    bce = -sum(y * math.log(p) + (1 - y) * math.log(1 - p) for y, p in zip(CLICK, probability)) / 2
    standardised = [(t - RATING_STATE["mean"]) / RATING_STATE["std"] for t in RATING]
    mse = sum((a - s) ** 2 for a, s in zip(z, standardised)) / 2
    return {"logits": logits, "z": z, "probability": probability, "value": value, "bce": bce, "mse": mse}


# --- the model, every parameter set explicitly ---

TRUNKS = {"shared_bottom": {"name": "shared_bottom", "hidden": [3]},
          "mmoe": {"name": "mmoe", "num_experts": 2, "expert_hidden": [3]}}


def build_model(trunk: str) -> MultiTaskModel:
    model = MultiTaskModel.build(
        get_registry(), FIELDS,
        tasks={"click": {"head": "binary", "options": {"tower": [2]}},
               "rating": {"head": "regression", "options": {"tower": []}}},
        label_states={"click": {"threshold": None}, "rating": RATING_STATE},
        embedding_dim=2, encoders={}, fusion={"name": "concat"}, trunk=TRUNKS[trunk])
    assigned = set()

    def put(parameter, values):
        assert parameter.shape == torch.Size(torch.tensor(values).shape)
        parameter.copy_(torch.tensor(values))
        assigned.add(id(parameter))

    def put_linear(linear, w, b):
        assert isinstance(linear, torch.nn.Linear)
        put(linear.weight, w)
        put(linear.bias, b)

    with torch.no_grad():
        put(model.encoders["item"].embedding.weight, EMBEDDING)
        if trunk == "shared_bottom":
            put_linear(model.trunk.bottom[0], BOTTOM_W, BOTTOM_B)
        else:
            for expert, w, b in zip(model.trunk.experts.experts, EXPERT_W, EXPERT_B, strict=True):
                put_linear(expert[0], w, b)
            for task in ("click", "rating"):
                put_linear(model.trunk.gates[task].logits, GATE_W[task], GATE_B[task])
        put_linear(model.heads["click"].tower[0], CLICK_TOWER_W, CLICK_TOWER_B)
        put_linear(model.heads["click"].output, CLICK_OUT_W, CLICK_OUT_B)
        put_linear(model.heads["rating"].output, RATING_OUT_W, RATING_OUT_B)
    unset = [name for name, p in model.named_parameters() if id(p) not in assigned]
    assert not unset, f"parameters left at their random init: {unset}"
    return model.eval()


def features():
    # Given in the opposite order to the declaration: fusion must follow the declared order.
    return {"price": torch.tensor(PRICE), "item": torch.tensor(ITEM_IDS)}


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=TOL)


# --- the tests ---

def test_reference_fusion_matches_paper():
    """The Python reference's fused rows equal the ones worked out on paper (guards the reference)."""
    for row in range(2):
        assert reference_fused(row) == pytest.approx(FUSED_BY_PAPER[row], abs=1e-12)


@pytest.mark.parametrize("trunk", sorted(TRUNKS))
def test_encoders_and_concat_fusion_match_hand_values(trunk):
    model = build_model(trunk)
    with torch.no_grad():
        inputs = features()
        encoded = {name: encoder(inputs[name]) for name, encoder in model.encoders.items()}
        close(model.fusion(encoded), FUSED_BY_PAPER)


@pytest.mark.parametrize("trunk", sorted(TRUNKS))
def test_trunk_matches_hand_values(trunk):
    model = build_model(trunk)
    with torch.no_grad():
        shared = model.trunk(torch.tensor(FUSED_BY_PAPER))
    for task in ("click", "rating"):
        close(shared[task], [reference_trunk(trunk, FUSED_BY_PAPER[row])[task] for row in range(2)])


@pytest.mark.parametrize("trunk", sorted(TRUNKS))
def test_full_model_outputs_scores_and_losses_match_hand_values(trunk):
    model, expected = build_model(trunk), reference(trunk)
    with torch.no_grad():
        outputs = model(features())
        assert set(outputs) == {"click", "rating"}
        assert outputs["click"].shape == outputs["rating"].shape == (2,)
        close(outputs["click"], expected["logits"])
        close(outputs["rating"], expected["z"])
        close(model.heads["click"].predict(outputs["click"]), expected["probability"])
        close(model.heads["rating"].predict(outputs["rating"]), expected["value"])
        close(model.heads["click"].loss(outputs["click"], torch.tensor(CLICK)), expected["bce"])
        close(model.heads["rating"].loss(outputs["rating"], torch.tensor(RATING)), expected["mse"])


def test_reference_exercises_relu_clipping_and_distinct_gates():
    """The chosen numbers are not degenerate: in the trunk and in the click tower some ReLU units
    clip and some pass, the two tasks' gates differ and neither is one-hot, so each check can fail."""
    pre_activations = []
    for row in range(2):
        x = reference_fused(row)
        pre_activations += affine(BOTTOM_W, BOTTOM_B, x)
        pre_activations += [a for w, b in zip(EXPERT_W, EXPERT_B) for a in affine(w, b, x)]
        gates = {task: softmax(affine(GATE_W[task], GATE_B[task], x)) for task in GATE_W}
        assert gates["click"] != pytest.approx(gates["rating"], abs=1e-3)
        assert all(0.05 < g < 0.95 for gate in gates.values() for g in gate)
    assert any(a < 0 for a in pre_activations) and any(a > 0 for a in pre_activations)
    for trunk in TRUNKS:
        hs = [reference_trunk(trunk, reference_fused(row))["click"] for row in range(2)]
        tower_pre = [a for h in hs for a in affine(CLICK_TOWER_W, CLICK_TOWER_B, h)]
        assert any(a < 0 for a in tower_pre) and any(a > 0 for a in tower_pre)
