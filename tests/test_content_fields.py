"""Text, image and audio fields end to end: `fusionrec fit` on a log whose items have real titles,
PNGs and WAVs (the synthetic media generator), with a frozen and cached text encoder and trainable
image and audio encoders; and a third-party content encoder on the core base class in the model."""

from __future__ import annotations

import re
import types

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from torch import nn

from conftest import save_tiny_bert, write_config
from fusionrec import hookimpl
from fusionrec.cli import make_cli
from fusionrec.components import ContentEncoder, FieldInfo
from fusionrec.data.media import MediaColumn
from fusionrec.data.synthetic_media import FILLER_WORDS, TITLE_WORDS, write_item_media
from fusionrec.models.multitask import MultiTaskModel
from fusionrec.plugins import Registry, create_plugin_manager, get_registry
from fusionrec.serving.content import TextPreparer, content_preparer
from fusionrec.training.content import attach_content_encoders
from fusionrec.training.optimisation import parameter_groups

ITEMS, ROWS = 120, 3000


@pytest.fixture(scope="module")
def media_log(tmp_path_factory) -> dict:
    """A click log over items whose latent vector drives the clicks and is shown by their media;
    3% of titles empty, 2% of images and audio files missing, one corrupt image."""
    directory = tmp_path_factory.mktemp("media_log")
    rng = np.random.default_rng(0)
    item_vec = rng.normal(0, 1, (ITEMS, 4))
    items = write_item_media(item_vec, directory / "media", seed=0, corrupt_image=0.01)
    item = rng.integers(0, ITEMS, ROWS)
    click = rng.random(ROWS) < 1 / (1 + np.exp(-1.5 * item_vec[item, 0]))
    log = pd.DataFrame({"user_id": rng.integers(0, 200, ROWS), "item_id": item, "click": click.astype(int)})
    log = log.merge(items, on="item_id", how="left")
    log.to_parquet(directory / "log.parquet")
    words = sorted({w for levels in TITLE_WORDS.values() for pair in levels for w in pair} | set(FILLER_WORDS))
    bert = save_tiny_bert(directory / "bert", words)
    corrupt = [str(directory / "media" / p) for p in items["item_image"].dropna()
               if not (directory / "media" / p).read_bytes().startswith(b"\x89PNG")]
    return {"dir": directory, "bert": bert, "corrupt": corrupt}


def config(media_log: dict, **text_options) -> dict:
    root = str(media_log["dir"] / "media")
    return {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "limit_train_batches": 6, "limit_val_batches": 2, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "callbacks": []},
        "data": {"path": str(media_log["dir"] / "log.parquet"), "split": {"method": "random"}, "batch_size": 256,
                 "features": {"user_id": {"type": "categorical"}, "item_id": {"type": "categorical"},
                              "item_title": {"type": "text"},
                              "item_image": {"type": "image", "root": root},
                              "item_audio": {"type": "audio", "root": root}}},
        "model": {"tasks": {"click": {"head": "binary"}}, "embedding_dim": 8,
                  "trunk": {"name": "shared_bottom", "hidden": [16]},
                  "encoders": {
                      "item_title": {"model": str(media_log["bert"]), "max_length": 12, **text_options},
                      "item_image": {"backbone": "resnet18", "image_size": 32, "mode": "finetune",
                                     "finetune_top": 1, "learning_rate": 1e-4},
                      "item_audio": {"sample_rate": 8000, "duration": 1.0, "n_mels": 16, "channels": 8,
                                     "mode": "finetune"}}},
    }


def fit(tmp_path, media_log, monkeypatch, **text_options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("FUSIONREC_CACHE_DIR", str(media_log["dir"] / "cache"))
    path = write_config(tmp_path, config(media_log, **text_options))
    cli = make_cli(["--config", str(path), "--trainer.default_root_dir", str(tmp_path)], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def test_fit_with_text_image_and_audio(tmp_path, media_log, monkeypatch):
    import fusionrec.training.content as module

    cache_sizes = []
    real_features = module.FeatureCache.features

    def counting(self, *args, **kwargs):
        result = real_features(self, *args, **kwargs)
        cache_sizes.append(self.computed)
        return result

    monkeypatch.setattr(module.FeatureCache, "features", counting)
    with pytest.warns(UserWarning, match="item_image") as caught:
        cli = fit(tmp_path, media_log, monkeypatch)
    fields = cli.model.content_fields()
    # Frozen text: features computed once per distinct title, then looked up; the backbone never trains.
    assert sum(cache_sizes) > 0
    text = fields["item_title"].encoder
    assert not any(p.requires_grad for p in text.backbone.parameters())
    # Image: finetune_top 1 trains resnet's layer4 with its own learning rate; the stem stays frozen.
    image = fields["item_image"].encoder
    assert all(p.requires_grad for p in image.backbone.layer4.parameters())
    assert not any(p.requires_grad for p in image.backbone.conv1.parameters())
    groups = cli.trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(1e-4)]
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    # The generator leaves some titles empty and some files missing: counted per epoch, per field.
    assert metrics["val/item_title/missing_rows"] > 0 and metrics["val/item_image/missing_rows"] > 0
    # The corrupt image is reported with its path and a row, once.
    messages = [str(w.message) for w in caught if media_log["corrupt"][0] in str(w.message)]
    assert len(messages) == 1 and "row" in messages[0]


def test_frozen_features_come_from_the_cache_until_a_setting_changes(tmp_path, media_log, monkeypatch):
    import fusionrec.training.content as module

    computed = []
    real_init = module.FeatureCache.__init__

    def tracking(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        computed.append(self)

    monkeypatch.setattr(module.FeatureCache, "__init__", tracking)
    fit(tmp_path / "a", media_log, monkeypatch, max_length=10)
    first = computed[-1].computed
    fit(tmp_path / "b", media_log, monkeypatch, max_length=10)
    assert first > 0 and computed[-1].computed == 0  # every title read back from disk
    fit(tmp_path / "c", media_log, monkeypatch, max_length=11)
    assert computed[-1].computed == first  # another max_length: another key, all recomputed
    stored = list((media_log["dir"] / "cache" / "features").glob("*.pt"))
    assert len(stored) >= 2
    assert set(torch.load(stored[0], weights_only=True)) == {"keys", "vectors", "present"}


def test_strict_media_stops_on_the_corrupt_file(tmp_path, media_log, monkeypatch):
    from fusionrec.errors import DataError

    monkeypatch.setenv("FUSIONREC_CACHE_DIR", str(media_log["dir"] / "cache"))
    cfg = config(media_log)
    cfg["data"]["features"]["item_image"]["strict"] = True
    cfg["trainer"]["limit_train_batches"] = 12  # enough batches to meet the corrupt item
    path = write_config(tmp_path, cfg)
    cli = make_cli(["--config", str(path), "--trainer.default_root_dir", str(tmp_path)], run=False)
    with pytest.raises(DataError, match=re.escape(media_log["corrupt"][0])):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


class BagOfWords(ContentEncoder):
    """A third-party content encoder on the core base class alone (no media plugin): the mean of its
    words' embeddings, ``[U, 4]``, tokenised by a word-level ``tokenizers`` tokenizer."""

    WORDS = ["[PAD]", "[UNK]", "red", "blue", "film", "song"]

    def __init__(self, field: FieldInfo, dim: int, *, frozen: bool = False, learning_rate: float | None = None,
                 strict: bool = False):
        super().__init__(field, dim, learning_rate=learning_rate, strict=strict)
        tokenizer = Tokenizer(WordLevel({word: i for i, word in enumerate(self.WORDS)}, unk_token="[UNK]"))
        tokenizer.pre_tokenizer = Whitespace()
        self.preparer = TextPreparer(tokenizer, max_length=3, pad_id=0, pad_token="[PAD]")
        self.attach_backbone(nn.Embedding(len(self.WORDS), 4).requires_grad_(not frozen), 4)

    def extract(self, inputs):
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        return (self.backbone(inputs["input_ids"]) * mask).sum(1) / mask.sum(1).clamp(min=1)


def test_a_content_encoder_on_the_core_base_class_works_in_the_model(tmp_path, monkeypatch):
    manager, distributions = create_plugin_manager()
    manager.register(types.SimpleNamespace(fusionrec_register_encoders=hookimpl(lambda: {"bag_of_words": BagOfWords})),
                     name="test")
    registry = Registry(manager, distributions)
    fields = {"item_id": FieldInfo("item_id", "categorical", cardinality=6),
              "title": FieldInfo("title", "text", extra={"strict": True})}

    def build(**options) -> MultiTaskModel:
        torch.manual_seed(0)
        return MultiTaskModel.build(registry, fields, {"click": {"head": "binary", "options": {}}},
                                    {"click": {"threshold": None}}, embedding_dim=4,
                                    encoders={"title": {"name": "bag_of_words", **options}},
                                    fusion={"name": "concat"}, trunk={"name": "shared_bottom", "hidden": [8]})

    contents = ["red film", "blue blue song song", "  "]  # the last is no content
    ids = torch.tensor([2, 3, 4, 5])

    # Trainable backbone: prepared per batch of distinct items, trained with its own learning rate.
    model = build(learning_rate=0.01)
    content = model.content_fields()["title"]
    assert isinstance(content.encoder, BagOfWords) and content.encoder.strict  # the field's strict reaches it
    column = MediaColumn(torch.tensor([0, 1, -1, 2]), contents)
    column.prepare = content.encoder.prepare
    batch = column.batch(torch.arange(4))
    assert batch.present.tolist() == [False, True, True, False]  # codes -1, 0, 1, 2
    model({"item_id": ids, "title": batch})["click"].sum().backward()
    assert content.encoder.backbone.weight.grad.abs().sum() > 0
    balancer = get_registry().build("balancers", "fixed", "model.balancer", {"click": 1.0})
    groups = parameter_groups(model, model.content_fields(), balancer, 1e-3)
    assert groups[1] == {"params": [content.encoder.backbone.weight], "lr": 0.01}
    # An export prepares its items as training did, from the spec and the tokenizer it writes.
    spec = content.encoder.serving_spec(tmp_path / "assets")
    bundled = content_preparer(spec, tmp_path / "assets")(contents)
    for key, value in content.encoder.prepare(contents).items():
        if key != "problems":
            np.testing.assert_array_equal(value.numpy(), bundled[key])

    # Frozen backbone: features computed once per item through the cache, then only the projection runs.
    monkeypatch.setenv("FUSIONREC_CACHE_DIR", str(tmp_path / "cache"))
    model = build(frozen=True)
    content = model.content_fields()["title"]
    assert not content.encoder.trainable_backbone
    column = MediaColumn(torch.tensor([0, 1, -1, 2]), contents)
    attach_content_encoders({"title": content}, {"train": types.SimpleNamespace(media={"title": column})})
    assert column.prepare is None and column.features.shape == (3, 4)
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 1
    cached = column.batch(torch.arange(4))
    with torch.no_grad():
        fresh = content(MediaColumn(column.codes, contents, prepare=content.encoder.prepare).batch(torch.arange(4)))
        torch.testing.assert_close(content(cached), fresh)
