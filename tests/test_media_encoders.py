"""The media encoders of plugins/fusionrec_media, offline: a tiny BERT written with save_pretrained
and read back through AutoModel/AutoTokenizer, torchvision backbones without weights on small
images, and a tiny wav2vec2 returned by the bundle's get_model in place of the downloaded weights."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from PIL import Image

from conftest import save_tiny_bert
from fusionrec.components import FieldInfo
from fusionrec.errors import ConfigError, DataError
from fusionrec.plugins import get_registry
from fusionrec.serving.content import TextPreparer, content_preparer
from fusionrec_media.base import MediaEncoder
from fusionrec_media.plugin import fusionrec_register_encoders

# Parametrised over the plugin's own registration, so that a newly registered encoder without a
# recipe below fails the shape test instead of going untested.
ENCODERS = fusionrec_register_encoders()
DIM = 8
WORDS = "the a cat dog sat on mat red blue song loud quiet film good bad".split()

RECIPES = {  # options that build each encoder small
    "text": {},  # model: the tiny BERT directory, added by the fixture
    "image": {"backbone": "resnet18", "image_size": 32},
    "audio_cnn": {"sample_rate": 8000, "duration": 1.0, "n_mels": 16, "channels": 8},
    "audio_pretrained": {"bundle": "WAV2VEC2_BASE", "duration": 0.5},
}
LAST_BLOCK = {  # what finetune_top: 1 must train, spelled out per backbone
    "text": lambda backbone: backbone.encoder.layer[-1],
    "image": lambda backbone: backbone.layer4,
    "audio_cnn": lambda backbone: backbone.blocks[-1],
    "audio_pretrained": lambda backbone: backbone.encoder.transformer.layers[-1],
}
CHANGED_PREPROCESSING = {"text": {"max_length": 16}, "image": {"image_size": 48},
                         "audio_cnn": {"duration": 0.5}, "audio_pretrained": {"duration": 0.25}}


def tiny_wav2vec2() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchaudio.models.wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[(8, 10, 5), (8, 8, 4)], extractor_conv_bias=False,
        encoder_embed_dim=16, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=4, encoder_pos_conv_groups=2,
        encoder_num_layers=2, encoder_num_heads=2, encoder_attention_dropout=0.0, encoder_ff_interm_features=32,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0,
        aux_num_out=None,
    ).eval()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert"), WORDS)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, list[str]]:
    """Two PNGs (RGB and greyscale, different sizes) and three WAVs (16 kHz mono 1 s, 8 kHz stereo 3 s
    with the sound in the middle second, 22.05 kHz 0.5 s)."""
    directory = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(directory / "a.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(directory / "b.png")

    def tone(rate: int, seconds: float) -> np.ndarray:
        return 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate).astype(np.float32)

    soundfile.write(directory / "a.wav", tone(16000, 1.0), 16000)
    middle = np.concatenate([np.zeros(8000, np.float32), tone(8000, 1.0), np.zeros(8000, np.float32)])
    soundfile.write(directory / "b.wav", np.stack([middle, middle], axis=1), 8000)
    soundfile.write(directory / "c.wav", tone(22050, 0.5), 22050)
    return {"image": [str(directory / "a.png"), str(directory / "b.png")],
            "audio": [str(directory / name) for name in ("a.wav", "b.wav", "c.wav")]}


@pytest.fixture
def build(bert_dir, monkeypatch):
    """``build(name, **options)``: the registered encoder ``name``, built small and seeded."""
    monkeypatch.setattr(torchaudio.pipelines.WAV2VEC2_BASE, "get_model", tiny_wav2vec2)

    def make(name: str, **options) -> MediaEncoder:
        assert name in RECIPES, f"no test recipe for the registered encoder {name!r}: add one"
        recipe = {"model": str(bert_dir)} if name == "text" else RECIPES[name]
        torch.manual_seed(0)
        return ENCODERS[name](FieldInfo(f"item_{name}", name.split("_")[0]), DIM, **{**recipe, **options})

    return make


def contents_for(name: str, files: dict[str, list[str]]) -> list:
    return {"text": ["the cat sat on the mat", "a loud song", "good film"], "image": files["image"]}.get(
        name, files["audio"])


def test_the_plugin_registers_its_encoders_through_the_entry_point():
    assert set(ENCODERS) == {"text", "image", "audio_cnn", "audio_pretrained"}
    registry = get_registry()
    for name, factory in ENCODERS.items():
        assert issubclass(factory, MediaEncoder)
        assert registry.get("encoders", name, "test").factory is factory


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_maps_prepared_contents_to_u_by_dim(name, build, files):
    encoder = build(name)
    contents = contents_for(name, files)
    prepared = encoder.prepare(contents)
    assert prepared["present"].tolist() == [True] * len(contents) and prepared["problems"] == []
    features = encoder.encode(prepared)
    assert features.shape == (len(contents), encoder.backbone_width) and torch.isfinite(features).all()
    output = encoder(prepared)
    assert output.shape == (len(contents), DIM) and encoder.output_dim == DIM
    json.dumps(encoder.cache_identity())  # plain data


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("mode", ["frozen", "finetune", "finetune_top"])
def test_mode_decides_which_parameters_get_gradients(name, mode, build, files):
    options = {"mode": "finetune", "finetune_top": 1} if mode == "finetune_top" else {"mode": mode}
    encoder = build(name, **options).train()
    prepared = encoder.prepare(contents_for(name, files))
    encoder(prepared).square().sum().backward()
    assert all(p.grad is not None for p in encoder.projection.parameters())
    backbone = dict(encoder.backbone.named_parameters())
    with_grad = {n for n, p in backbone.items() if p.grad is not None}
    if mode == "frozen":
        assert with_grad == set() and not any(p.requires_grad for p in backbone.values())
        assert not encoder.trainable_backbone
        # Frozen layers run as in eval() while the model trains: no dropout, no BatchNorm statistics moved.
        with torch.no_grad():
            assert torch.equal(encoder.encode(prepared), encoder.eval().encode(prepared))
    elif mode == "finetune":
        assert all(p.requires_grad for p in backbone.values()) and encoder.backbone.training
        assert len(with_grad) > 0.9 * len(backbone)  # all but unused ones (BERT's pooler)
    else:
        last = {id(p) for p in LAST_BLOCK[name](encoder.backbone).parameters()}
        assert with_grad == {n for n, p in backbone.items() if id(p) in last}
        assert LAST_BLOCK[name](encoder.backbone).training and encoder.trainable_backbone


def test_finetune_top_counts_feature_children_and_trains_what_follows_them(build):
    encoder = build("image", backbone="mobilenet_v3_small", mode="finetune", finetune_top=2)
    network = encoder.backbone
    assert encoder.backbone_width == 1024  # classifier[-1] removed, classifier[0] kept
    trains = {id(p) for p in network.parameters() if p.requires_grad}
    expected = [*network.features[-2:].parameters(), *network.classifier[0].parameters()]
    assert trains == {id(p) for p in expected}
    assert encoder.eval()(encoder.prepare([])).shape == (0, DIM)


def test_bad_mode_options_name_the_config_key(build):
    expected = r"model\.encoders\.item_image\.mode: expected 'frozen' or 'finetune', got 'x'"
    with pytest.raises(ConfigError, match=expected):
        build("image", mode="x")
    with pytest.raises(ConfigError, match=r"item_image\.finetune_top: 9 is more than the 4 blocks"):
        build("image", mode="finetune", finetune_top=9)
    with pytest.raises(ConfigError, match=r"finetune_top: only applies with mode 'finetune'"):
        build("image", finetune_top=1)
    with pytest.raises(ConfigError, match=r"item_text\.pooling: expected 'cls' or 'mean'"):
        build("text", pooling="max")


def test_text_pooling_ignores_padding_and_truncates(build):
    for pooling in ("mean", "cls"):
        encoder = build("text", pooling=pooling).eval()
        alone = encoder.encode(encoder.prepare(["good film"]))
        padded = encoder.encode(encoder.prepare(["good film", "the cat sat on the mat and the dog sat on a mat"]))
        torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)
    assert build("text", max_length=4).prepare(["the cat sat on the mat"])["input_ids"].shape == (1, 4)


def test_audio_is_resampled_mixed_cropped_and_padded(build, files):
    waveform = build("audio_cnn").prepare(files["audio"])["waveform"]  # to 8 kHz, 1 s
    assert waveform.shape == (3, 8000)
    assert waveform[1].abs().mean() > 0.2  # the middle second of b.wav: the tone, not the silence
    assert waveform[2, :3000].abs().mean() > 0.2 and waveform[2, 4100:].abs().max() == 0  # 0.5 s, padded


def test_missing_unreadable_and_empty_items_are_reported_not_raised(build, files, tmp_path):
    garbage_png, garbage_wav = tmp_path / "x.png", tmp_path / "x.wav"
    garbage_png.write_bytes(b"not an image at all" * 10)
    garbage_wav.write_bytes(b"RIFF....WAVEfmt garbage" * 10)
    missing = str(tmp_path / "missing.png")
    # None, NaN and blank strings are no content (a missing modality), never a problem, even when strict;
    # a file that cannot be read is a problem.
    cases = {
        "text": (["good film", "", None, " \t", float("nan")], {}),
        "image": ([files["image"][0], missing, str(garbage_png), "  ", None],
                  {missing: "file not found", str(garbage_png): "cannot decode image"}),
        "audio_cnn": ([files["audio"][0], str(garbage_wav), "", None, float("nan")],
                      {str(garbage_wav): "cannot decode audio"}),
    }
    for name, (contents, reasons) in cases.items():
        encoder = build(name)
        prepared = encoder.prepare(contents)
        assert prepared["present"].tolist() == [True, False, False, False, False]
        assert [content for content, _ in prepared["problems"]] == list(reasons)
        for content, reason in prepared["problems"]:
            assert reason.startswith(reasons[content])
        assert encoder.encode(prepared)[1:].abs().max() == 0  # placeholders give no features
        assert encoder(prepared).shape == (5, DIM)
        strict = build(name, strict=True)
        assert strict.prepare([c for c in contents if c not in reasons])["problems"] == []
        for bad, reason in reasons.items():
            with pytest.raises(DataError, match=f"item_{name}.*{reason}"):
                strict.prepare([contents[0], bad])
    with pytest.raises(DataError, match="missing.png': file not found"):
        build("image", strict=True).prepare([missing])


def test_training_prepares_content_exactly_as_the_bundle_does(build, files, tmp_path):
    long = " ".join(WORDS * 3)  # more tokens than max_length: truncated
    texts = ["the cat sat on the mat", long, "", None, "  good film  ", float("nan")]
    contents = {"text": texts, "image": [*files["image"], None, "  "], "audio_cnn": [*files["audio"], "", None]}
    for name, items in contents.items():
        encoder = build(name, max_length=6) if name == "text" else build(name)
        training = encoder.prepare(items)
        # The bundle's preparer, rebuilt from the spec and assets export writes.
        bundle = content_preparer(encoder.serving_spec(tmp_path / name), tmp_path / name)(items)
        assert list(training) == list(bundle)
        for key in set(bundle) - {"problems"}:
            np.testing.assert_array_equal(training[key].numpy(), bundle[key], err_msg=f"{name}: {key}")
        assert training["present"].tolist() == [isinstance(i, str) and bool(i.strip()) for i in items]
    # Text as transformers' own tokenizer call prepared it before (stripped; no content as "").
    text = build("text", max_length=6)
    expected = text.tokenizer([t.strip() if isinstance(t, str) else "" for t in texts], padding="longest",
                              truncation=True, max_length=6, return_tensors="np")
    prepared = text.prepare(texts)
    assert prepared["input_ids"].shape == (len(texts), 6)
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(prepared[key].numpy(), expected[key])


def test_text_preparation_keeps_the_tokenizers_padding_and_truncation_sides(bert_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert_dir, padding_side="left", truncation_side="left")
    preparer = TextPreparer(tokenizer.backend_tokenizer, 5, tokenizer.pad_token_id, tokenizer.pad_token,
                            tokenizer.padding_side, tokenizer.truncation_side)
    texts = ["the cat sat on the mat", "a dog"]
    expected = tokenizer(texts, padding="longest", truncation=True, max_length=5, return_tensors="np")
    prepared, bundled = preparer(texts), content_preparer(preparer.spec(tmp_path), tmp_path)(texts)
    assert prepared["input_ids"][1, 0] == tokenizer.pad_token_id  # padded on the left
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(prepared[key], expected[key])
        np.testing.assert_array_equal(bundled[key], expected[key])


def test_a_tokenizer_without_a_fast_version_is_refused_naming_the_encoder(build, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *args, **kwargs: object())
    with pytest.raises(ConfigError, match=r"model\.encoders\.item_text\.model: the tokenizer of .* no fast"):
        build("text")


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_cache_identity_follows_weights_and_preprocessing(name, build):
    identity = build(name).cache_identity()
    assert build(name).cache_identity() == identity
    assert build(name, **CHANGED_PREPROCESSING[name]).cache_identity() != identity
    changed = build(name)
    with torch.no_grad():
        next(changed.backbone.parameters()).add_(0.01)
    assert changed.cache_identity()["weights_sha256"] != identity["weights_sha256"]


def test_pretrained_audio_names_the_bundle_when_weights_cannot_be_loaded(monkeypatch, tmp_path):
    def offline(url: str, *args, **kwargs):
        raise URLError(f"cannot reach {url}")

    # No cached weights, so get_model downloads, and the download fails as it does without network
    # (and never fetches 360 MB where there is network).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    field = FieldInfo("sound", "audio")
    with pytest.raises(ConfigError, match=r"sound\.bundle: the weights of torchaudio bundle 'WAV2VEC2_BASE' "
                                          r"could not be loaded \(URLError: .*cannot reach https://"):
        ENCODERS["audio_pretrained"](field, DIM, bundle="WAV2VEC2_BASE")
    with pytest.raises(ConfigError, match=r"'NOPE' is not a torchaudio wav2vec2-style bundle; available: .*HUBERT"):
        ENCODERS["audio_pretrained"](field, DIM, bundle="NOPE")
