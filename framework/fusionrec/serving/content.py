"""Item content (text, image files, audio files) -> the item encoder's input arrays, with numpy.

The media plugin prepares content with these same functions while training, so an exported bundle
prepares it exactly as training did. Each preparer is rebuilt from a ``spec`` (a JSON mapping in the
bundle's manifest, with ``kind`` and ``version``) plus the bundle's asset files:

- ``text``: a Hugging Face ``tokenizer.json`` run by the ``tokenizers`` package (no transformers),
  truncated to ``max_length`` and padded to the longest text: ``input_ids``, ``attention_mask`` ``[U, L]``;
- ``image``: Pillow decodes, resizes the short side to ``resize`` (bilinear), centre-crops ``crop``
  pixels, scales to [0, 1] and normalises with ``mean``/``std``: ``pixels`` ``[U, 3, crop, crop]``;
- ``audio``: soundfile decodes, mixes to mono, resamples to ``sample_rate`` (torchaudio, only for a file
  at another rate), keeps the middle ``num_samples`` or pads with silence: ``waveform`` ``[U, samples]``.

Every preparer also returns ``present`` ``Bool[U]``: ``None`` is an item without content.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPEC_VERSION = 1


class ContentError(ValueError):
    """One item's content could not be read: the message says why (file not found, cannot decode...)."""


def existing_file(content: Any) -> Path:
    """The path named by ``content``, or a ContentError saying why there is none."""
    if content is None or (isinstance(content, float) and content != content) or not str(content).strip():
        raise ContentError("no path given")
    path = Path(str(content))
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ContentError("file not found") from None
    except (OSError, ValueError) as error:  # a name too long, a symlink loop, a NUL character
        raise ContentError(f"cannot open: {getattr(error, 'strerror', None) or error}") from None
    if stat.S_ISDIR(mode):
        raise ContentError("a directory, not a file")
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
        raise ContentError("not a regular file")
    return path


def image_pixels(content: Any, resize: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """An image file -> ``float32 [3, crop, crop]``."""
    from PIL import Image  # imported here: only bundles with images need Pillow

    path = existing_file(content)
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for a broken file
        raise ContentError(f"cannot decode image: {type(error).__name__}: {error}") from error
    width, height = rgb.size
    # The short side becomes ``resize``; the long one keeps the aspect ratio (truncated, as torchvision does).
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    rgb = rgb.crop((left, top, left + crop, top + crop))  # Pillow pads with black past the border
    pixels = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) * np.float32(1 / 255)
    return (pixels - np.float32(mean)[:, None, None]) / np.float32(std)[:, None, None]


def waveform(content: Any, sample_rate: int, num_samples: int) -> np.ndarray:
    """An audio file -> ``float32 [num_samples]`` mono at ``sample_rate``."""
    import soundfile  # imported here: a missing libsndfile only matters to bundles with audio

    path = existing_file(content)
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile errors for a corrupt or unsupported file
        raise ContentError(f"cannot decode audio: {type(error).__name__}: {error}") from error
    if data.shape[0] == 0:
        raise ContentError("no audio samples")
    wave = data.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        wave = _resample(wave, int(rate), int(sample_rate))
    if len(wave) >= num_samples:  # keep the middle of a long clip, pad a short one with silence
        start = (len(wave) - num_samples) // 2
        return np.ascontiguousarray(wave[start:start + num_samples])
    return np.pad(wave, (0, num_samples - len(wave)))


def _resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    try:
        import torch
        from torchaudio.functional import resample
    except ImportError:
        raise ContentError(f"the file is sampled at {rate} Hz and the model reads {target} Hz: resample it, "
                           f"or install torchaudio to have it resampled") from None
    return resample(torch.from_numpy(wave), rate, target).numpy()


class ContentPreparer:
    """``spec`` (+ the bundle's asset directory) -> ``__call__(contents) -> {input: array [U, ...]}``.

    ``errors``: ``"raise"`` (a :class:`ContentError` naming the item) or ``"missing"`` (the item counts as
    having no content and ``problems`` lists ``(content, reason)``), as a non-strict training run does.
    """

    def __init__(self, spec: Mapping[str, Any], directory: str | Path = "."):
        if spec.get("version") != SPEC_VERSION or spec.get("kind") not in ("text", "image", "audio"):
            raise ContentError(f"unsupported content spec (kind {spec.get('kind')!r}, version "
                               f"{spec.get('version')!r}); this fusionrec reads version {SPEC_VERSION}")
        self.spec = dict(spec)
        self.kind = spec["kind"]
        if self.kind == "text":
            from tokenizers import Tokenizer  # imported here: only bundles with text need it

            self.tokenizer = Tokenizer.from_file(str(Path(directory) / spec["tokenizer"]))
            self.tokenizer.enable_truncation(spec["max_length"])
            self.tokenizer.enable_padding(direction=spec["padding_side"], pad_id=spec["pad_id"],
                                          pad_token=spec["pad_token"])

    def __call__(self, contents: Sequence[Any], errors: str = "raise") -> dict[str, Any]:
        items, problems = [], []
        for content in contents:
            try:
                items.append(None if _absent(content) else self.read(content))
            except ContentError as error:
                if errors == "raise":
                    raise ContentError(f"{content!r}: {error}") from None
                items.append(None)
                problems.append((content, str(error)))
        present = np.array([item is not None for item in items], dtype=bool)
        return {**self.batch(items), "present": present, "problems": problems}

    def read(self, content: Any) -> Any:
        spec = self.spec
        if self.kind == "text":
            text = str(content)
            if not text.strip():
                raise ContentError("empty text")
            return text
        if self.kind == "image":
            return image_pixels(content, spec["resize"], spec["crop"], spec["mean"], spec["std"])
        return waveform(content, spec["sample_rate"], spec["num_samples"])

    def batch(self, items: list) -> dict[str, np.ndarray]:
        spec = self.spec
        if self.kind == "text":
            # A missing text is tokenised as "" ([CLS] [SEP]): a valid input whose features are zeroed.
            encodings = self.tokenizer.encode_batch([item or "" for item in items])
            return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(items), -1),
                    "attention_mask": np.array([e.attention_mask for e in encodings],
                                               dtype=np.int64).reshape(len(items), -1)}
        if self.kind == "image":
            shape = (3, spec["crop"], spec["crop"])
            return {"pixels": np.stack([np.zeros(shape, np.float32) if item is None else item for item in items])
                    if items else np.zeros((0, *shape), np.float32)}
        return {"waveform": np.stack([np.zeros(spec["num_samples"], np.float32) if item is None else item
                                      for item in items]) if items else np.zeros((0, spec["num_samples"]), np.float32)}


def _absent(content: Any) -> bool:
    return content is None or (isinstance(content, float) and content != content)
