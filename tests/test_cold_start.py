"""Cold start: on items never seen in training, a model that reads the items' titles ranks clicks
better than one that knows items only by id."""

from __future__ import annotations

import numpy as np
import pandas as pd
from lightning.pytorch import Trainer, seed_everything

from conftest import save_tiny_bert
from fusionrec.data.datamodule import MultiTaskDataModule
from fusionrec.data.synthetic_media import FILLER_WORDS, TITLE_WORDS, item_titles
from fusionrec.training.module import MultiTaskModule

ITEMS, USERS, ROWS = 400, 300, 16000


def held_out_auc(directory, features: dict, encoders: dict) -> float:
    seed_everything(0)
    data = MultiTaskDataModule(features=features, tasks={"click": {"head": "binary"}},
                               **{split: str(directory / f"{split}.parquet") for split in ("train", "val", "test")},
                               batch_size=256)
    model = MultiTaskModule(tasks={"click": {"head": "binary"}}, embedding_dim=8, encoders=encoders,
                            trunk={"name": "shared_bottom", "hidden": [32]}, learning_rate=0.005)
    trainer = Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(model, data)
    return trainer.test(model, data, verbose=False)[0]["test/click/auc"]


def test_titles_rank_unseen_items_better_than_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONREC_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    item_vec = rng.normal(0, 1, (ITEMS, 4))
    # Clicks follow latent dim 0, which every title names with a weather word (dropped 15% of the time).
    titles = item_titles(item_vec, rng)
    item = rng.integers(0, ITEMS, ROWS)
    click = rng.random(ROWS) < 1 / (1 + np.exp(-2.0 * item_vec[item, 0]))
    log = pd.DataFrame({"user_id": rng.integers(0, USERS, ROWS), "item_id": item,
                        "item_title": np.array(titles, dtype=object)[item], "click": click.astype(int)})
    cold = item >= int(ITEMS * 0.8)  # the last 20% of items appear only in the test split
    warm = log[~cold].sample(frac=1.0, random_state=0)
    warm.iloc[: int(len(warm) * 0.9)].to_parquet(tmp_path / "train.parquet")
    warm.iloc[int(len(warm) * 0.9):].to_parquet(tmp_path / "val.parquet")
    log[cold].to_parquet(tmp_path / "test.parquet")
    words = sorted({w for levels in TITLE_WORDS.values() for pair in levels for w in pair} | set(FILLER_WORDS))
    bert = save_tiny_bert(tmp_path / "bert", words)

    ids = {"user_id": {"type": "categorical"}, "item_id": {"type": "categorical"}}
    id_only = held_out_auc(tmp_path, ids, {})
    with_titles = held_out_auc(tmp_path, {**ids, "item_title": {"type": "text"}},
                               {"item_title": {"model": str(bert), "max_length": 12, "mode": "frozen"}})
    # Unseen items all share the out-of-vocabulary id, so ids alone rank them at chance; the titles
    # name dim 0, which drives clicks, and even a frozen, randomly initialised encoder passes that
    # on. Measured: ids 0.499, ids + titles 0.656.
    assert id_only < 0.56
    assert with_titles > id_only + 0.1
