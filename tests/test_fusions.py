"""Every registered fusion maps the field encodings to one vector; attention and gated mask absent content."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from conftest import small_config
from fusionrec.data.datamodule import MultiTaskDataModule
from fusionrec.errors import ConfigError
from fusionrec.plugins import get_registry
from fusionrec.training.module import MultiTaskModule

B = 4
INPUT_DIMS = {"user": 5, "title": 7, "poster": 3}
SMALL_OPTIONS = {"attention": {"dim": 8, "heads": 2}, "gated": {"dim": 8}}
# Rows 1 and 3 lack a title, rows 0 and 1 a poster: row 1 has only its user field.
PRESENT = {"title": torch.tensor([True, False, True, False]), "poster": torch.tensor([False, False, True, True])}


def build(name: str, input_dims: dict[str, int] = INPUT_DIMS, **options):
    torch.manual_seed(0)
    return get_registry().build("fusions", name, "model.fusion", input_dims, **(options or SMALL_OPTIONS.get(name, {})))


def encodings(input_dims: dict[str, int] = INPUT_DIMS) -> dict[str, torch.Tensor]:
    return {field: torch.randn(B, width, requires_grad=True) for field, width in input_dims.items()}


@pytest.mark.parametrize("name", sorted(get_registry().components["fusions"]))
def test_every_fusion_maps_fields_to_one_vector_and_trains_every_field(name):
    fusion = build(name)
    encoded = encodings()
    out = fusion(encoded, PRESENT)
    assert out.shape == (B, fusion.output_dim)
    # A random weighting: the sum of a LayerNorm's output has no gradient.
    (out * torch.randn_like(out)).sum().backward()
    for field, tensor in encoded.items():
        assert tensor.grad.abs().sum() > 0, field


@pytest.mark.parametrize("name", ["attention", "gated"])
def test_an_absent_field_cannot_change_its_row(name):
    fusion = build(name).eval()
    encoded = encodings()
    before = fusion(encoded, PRESENT)
    changed = {**encoded, "title": encoded["title"] + 10 * torch.randn(B, INPUT_DIMS["title"])}
    after = fusion(changed, PRESENT)
    absent = ~PRESENT["title"]
    torch.testing.assert_close(after[absent], before[absent])
    assert (after[~absent] - before[~absent]).abs().amax(dim=1).min() > 1e-3


@pytest.mark.parametrize("name", ["attention", "gated"])
def test_a_row_with_every_field_absent_still_gets_a_finite_vector(name):
    dims = {"title": 7, "poster": 3}
    out = build(name, dims)(encodings(dims), {"title": torch.zeros(B, dtype=torch.bool), "poster": PRESENT["poster"]})
    assert torch.isfinite(out).all()


def test_gated_weights_are_zero_for_absent_fields_and_sum_to_one():
    fusion = build("gated")
    fusion(encodings(), {"title": torch.zeros(B, dtype=torch.bool), "poster": PRESENT["poster"]})
    weights = fusion.last_weights
    assert list(weights) == list(INPUT_DIMS) and weights["title"] == 0.0
    assert math.isclose(sum(weights.values()), 1.0, rel_tol=1e-6)
    fusion(encodings(), {"title": torch.zeros(B, dtype=torch.bool), "poster": torch.zeros(B, dtype=torch.bool)})
    assert math.isclose(fusion.last_weights["user"], 1.0, rel_tol=1e-6)  # the one field left takes it all


@pytest.mark.parametrize("name, options, key", [
    ("attention", {"dim": 10, "heads": 4}, "model.fusion.dim"),
    ("attention", {"dim": 8, "heads": 0}, "model.fusion.heads"),
    ("attention", {"dim": 8, "layers": 0}, "model.fusion.layers"),
    ("attention", {"dim": 8.0}, "model.fusion.dim"),
    ("attention", {"dim": 8, "dropout": 1.5}, "model.fusion.dropout"),
    ("gated", {"dim": 0}, "model.fusion.dim"),
    ("gated", {"dim": 8, "heads": 2}, "model.fusion: unknown option(s) 'heads'"),
])
def test_bad_options_name_their_key(name, options, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(")", r"\)")):
        build(name, **options)


@pytest.mark.parametrize("fusion", [{"name": "attention", "dim": 16, "heads": 2}, {"name": "gated", "dim": 16}])
def test_fusion_trains_end_to_end(fusion):
    # Three epochs reach click AUC 0.64 (attention), 0.66 (gated), 0.68 (concat); one epoch is too
    # few even for concat (0.56). A constant fusion output scores 0.5.
    config = small_config(trainer={"max_epochs": 3})
    config["model"]["fusion"] = fusion
    seed_everything(config["seed_everything"])
    datamodule = MultiTaskDataModule(**config["data"], tasks=config["model"]["tasks"])
    model = MultiTaskModule(**config["model"])
    trainer = Trainer(**config["trainer"])
    trainer.fit(model, datamodule)
    metrics = trainer.test(model, datamodule, verbose=False)[0]
    assert all(math.isfinite(value) for value in metrics.values())
    assert metrics["test/click/auc"] > 0.6
