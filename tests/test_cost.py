"""fit reports what the model costs: every embedding table and encoder, and a warning over budget."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config, write_config

from fusionrec.cli import main
from fusionrec.training.cost import MIB, model_costs, table_memory_warning
from fusionrec.training.module import MultiTaskModule


def test_fit_prints_every_table_and_warns_over_the_budget(tmp_path, capsys):
    config = small_config(trainer={"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "callbacks": []})
    config["model"]["embedding_budget_mib"] = 0.01
    path = write_config(tmp_path, config)
    with pytest.warns(UserWarning, match=r"embedding tables take [0-9.]+ MiB, over model.embedding_budget_mib = 0.01 "
                                         r"\(largest: user_id table"):
        assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(tmp_path),
                     "--test_after_fit", "false"]) == 0
    printed = capsys.readouterr().out
    assert "model cost" in printed
    for row in ("user_id table [", "item_tags table [", "item_price encoder", "trunk", "heads", "total"):
        assert row in printed


def test_costs_count_table_parameters_and_adam_memory(tmp_path):
    config = small_config(trainer={"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1,
                                   "enable_checkpointing": True})
    path = write_config(tmp_path, config)
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(tmp_path), "--test_after_fit", "false"]) == 0
    (checkpoint,) = tmp_path.glob("**/last.ckpt")
    model = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu").model
    costs = {cost.component.split(" [")[0]: cost for cost in model_costs(model)}
    table = model.encoders["user_id"].embedding
    user = costs["user_id table"]
    assert user.parameters == table.num_embeddings * table.embedding_dim == user.trainable
    assert user.bytes == 4 * user.parameters and user.training_bytes == 4 * user.bytes  # fp32, Adam: x4
    assert sum(c.parameters for c in costs.values()) == sum(p.numel() for p in model.parameters())
    tables = sum(c.bytes for c in costs.values() if c.is_table) / MIB
    assert table_memory_warning(list(costs.values()), tables * 1.01) is None
    assert table_memory_warning(list(costs.values()), tables * 0.99) is not None


def test_a_content_fields_backbone_is_one_encoder_row_not_a_table():
    from fusionrec.models.content import ContentField

    class Backbone(torch.nn.Module):  # a transformer-like encoder with its own token embeddings
        output_dim = 4

        def __init__(self):
            super().__init__()
            self.tokens = torch.nn.Embedding(100, 4)
            self.projection = torch.nn.Linear(4, 4)

    model = torch.nn.Module()
    model.encoders = torch.nn.ModuleDict({"title": ContentField(Backbone()),
                                          "user_id": torch.nn.Embedding(10, 4)})
    model.fusion, model.trunk, model.heads = torch.nn.Identity(), torch.nn.Linear(8, 2), torch.nn.ModuleDict()
    rows = {cost.component: cost for cost in model_costs(model)}
    assert rows["title encoder"].parameters == 100 * 4 + 4 * 4 + 4 + 4  # tokens, projection, missing vector
    assert not rows["title encoder"].is_table and rows["user_id table [10 x 4]"].is_table
    assert not any(name.startswith("title table") for name in rows)
