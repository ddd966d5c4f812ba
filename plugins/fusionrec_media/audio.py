"""Audio encoders over sound files: ``audio_cnn`` (log-mel spectrogram + a small CNN, trained from
scratch) and ``audio_pretrained`` (a torchaudio wav2vec2-style bundle)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from fusionrec.components import FieldInfo, PositiveFloat, PositiveInt
from fusionrec.errors import ConfigError
from fusionrec.serving.content import AudioPreparer
from fusionrec_media.base import MediaEncoder


class AudioEncoder(MediaEncoder):
    """Shared preprocessing (:class:`fusionrec.serving.content.AudioPreparer`, shared with exported
    bundles): decode with soundfile, mix to mono, resample to ``sample_rate``, then centre-crop or
    zero-pad to ``duration`` seconds: ``prepare -> {"waveform": [U, samples]}``. Subclasses call
    ``set_timing`` before ``attach_backbone``."""

    sample_rate: int
    duration: float

    def set_timing(self, sample_rate: int, duration: float) -> None:
        self.sample_rate, self.duration = sample_rate, duration
        self.preparer = AudioPreparer(sample_rate, self.num_samples)

    @property
    def num_samples(self) -> int:
        return round(self.sample_rate * self.duration)

    def preprocessing(self) -> dict:
        return {"sample_rate": self.sample_rate, "duration": self.duration}


class CnnAudioEncoder(AudioEncoder):
    """Log-mel spectrogram (``n_mels`` bands) and three conv blocks (conv, BatchNorm, ReLU, 2x2 max
    pool) of ``channels // 4``, ``channels // 2`` and ``channels`` filters, averaged over frequency
    and time: ``[U, samples] -> [U, channels] -> [U, dim]``.

    Randomly initialised, so ``mode: finetune`` is the sensible choice; ``frozen`` still works (a
    fixed random projection). ``finetune_top`` counts the conv blocks.
    """

    name = "audio_cnn"

    def __init__(self, field: FieldInfo, dim: PositiveInt, *, sample_rate: PositiveInt = 16000,
                 duration: PositiveFloat = 2.0, n_mels: PositiveInt = 64, channels: int = 64, mode: str = "frozen",
                 finetune_top: PositiveInt | None = None, learning_rate: PositiveFloat | None = None,
                 strict: bool = False):
        super().__init__(field, dim, mode=mode, finetune_top=finetune_top, learning_rate=learning_rate,
                         strict=strict)
        from torchaudio.transforms import AmplitudeToDB, MelSpectrogram

        if channels < 4:
            raise ConfigError(f"{self.key}.channels: expected at least 4, got {channels}")
        self.set_timing(sample_rate, duration)
        self.n_mels = n_mels
        widths = [1, channels // 4, channels // 2, channels]
        blocks = nn.Sequential(*(conv_block(c_in, c_out) for c_in, c_out in zip(widths, widths[1:])))
        backbone = nn.Sequential(OrderedDict(
            mel=MelSpectrogram(sample_rate, n_mels=n_mels),
            channel=nn.Unflatten(1, (1, n_mels)),  # [U, mels, frames] -> [U, 1, mels, frames]
            # No top_db: its cut-off is relative to a maximum, which would tie an item's features to
            # the rest of its batch and break caching by content.
            decibels=AmplitudeToDB(top_db=None),
            blocks=blocks,
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
        ))
        self.attach_backbone(backbone, channels, list(blocks))

    def extract(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.backbone(inputs["waveform"])

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "n_mels": self.n_mels}


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.MaxPool2d(2))


class PretrainedAudioEncoder(AudioEncoder):
    """A ``torchaudio.pipelines`` wav2vec2-style bundle (``WAV2VEC2_BASE``, ``HUBERT_BASE``,
    ``WAVLM_BASE``...): its last transformer layer's features, averaged over time, at the bundle's
    sample rate: ``[U, samples] -> [U, width] -> [U, dim]``. ``finetune_top`` counts transformer layers.

    The weights come from ``bundle.get_model()``, which downloads them into
    ``torch.hub.get_dir()/checkpoints`` once; without network access, put the file there beforehand.
    """

    name = "audio_pretrained"

    def __init__(self, field: FieldInfo, dim: PositiveInt, *, bundle: str, duration: PositiveFloat = 2.0,
                 mode: str = "frozen", finetune_top: PositiveInt | None = None,
                 learning_rate: PositiveFloat | None = None, strict: bool = False):
        super().__init__(field, dim, mode=mode, finetune_top=finetune_top, learning_rate=learning_rate,
                         strict=strict)
        from torchaudio import pipelines

        found = getattr(pipelines, bundle, None) if isinstance(bundle, str) else None
        if not isinstance(found, pipelines.Wav2Vec2Bundle):
            names = sorted(name for name in pipelines.__all__
                           if isinstance(getattr(pipelines, name), pipelines.Wav2Vec2Bundle))
            raise ConfigError(f"{self.key}.bundle: {bundle!r} is not a torchaudio wav2vec2-style bundle; "
                              f"available: {', '.join(names)}")
        try:
            network = found.get_model()
        except Exception as error:  # no network, a truncated download, a mismatched state dict
            raise ConfigError(f"{self.key}.bundle: the weights of torchaudio bundle {bundle!r} could not be "
                              f"loaded ({type(error).__name__}: {error}); put the file in "
                              f"torch.hub.get_dir()/checkpoints to load it offline") from error
        self.bundle = bundle
        self.set_timing(int(found.sample_rate), duration)
        with torch.no_grad():  # the feature width, read off the model rather than its private params
            width = network.extract_features(torch.zeros(1, self.sample_rate // 10))[0][-1].shape[-1]
        self.attach_backbone(network, width, transformer_layers(network))

    def extract(self, inputs: dict[str, Tensor]) -> Tensor:
        layers, _ = self.backbone.extract_features(inputs["waveform"])
        return layers[-1].mean(dim=1)

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "bundle": self.bundle}


def transformer_layers(network: nn.Module) -> list[nn.Module]:
    """wav2vec2, HuBERT and WavLM keep their transformer layers in ``encoder.transformer.layers``
    (under ``model.`` when the bundle wraps the model to normalise the waveform). Not simply the
    longest ModuleList: the convolutional feature extractor's layer list can be as long."""
    for name, module in network.named_modules():
        if name.endswith("encoder.transformer"):
            return list(module.layers)
    return []
