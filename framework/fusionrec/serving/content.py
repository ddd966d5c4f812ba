"""Item content (text, image files, audio files) -> the item encoder's input arrays, with numpy.

The one preparation of content: a content encoder prepares its items with a :class:`ContentPreparer`
while training (``fusionrec.components.ContentEncoder.prepare``), writes its ``spec`` into the bundle it
is exported to, and the bundle rebuilds the same preparer from that spec (:func:`content_preparer`), so
training and serving cannot prepare an item differently. Kinds:

- ``text``: a Hugging Face tokenizer run by the ``tokenizers`` package (no transformers; training hands
  over its fast tokenizer's ``backend_tokenizer``, a bundle reads its ``tokenizer.json``), truncated to
  ``max_length`` and padded to the longest text: ``input_ids``, ``attention_mask`` ``[U, L]``;
- ``image``: Pillow decodes, resizes the short side to ``resize`` (bilinear), centre-crops ``crop``
  pixels, scales to [0, 1] and normalises with ``mean``/``std``: ``pixels`` ``[U, 3, crop, crop]``;
- ``audio``: soundfile decodes, mixes to mono, resamples to ``sample_rate`` (torchaudio, only for a file
  at another rate), keeps the middle ``num_samples`` or pads with silence: ``waveform`` ``[U, samples]``.

Every preparer also returns ``present`` ``Bool[U]``: an item with no content
(:func:`fusionrec.features.values.content`: null or blank) or, with ``errors="missing"``, an unreadable
one is not present, and its arrays are placeholders the encoder zeroes.

The preparer class is the one place that knows its kind: export, serving and the feature cache ask it
(``reads_files``, ``dynamic_axes``, ``asset_files``, ``examples``) instead of testing the kind's name.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionrec.features import values

SPEC_VERSION = 1


class ContentError(ValueError):
    """One item's content could not be read: the message says why (file not found, cannot decode...)."""


def existing_file(content: Any) -> Path:
    """The path named by ``content``, or a ContentError saying why there is none."""
    named = values.content(content)
    if named is None:
        raise ContentError("no path given")
    path = Path(named)
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


def _stacked(items: list, shape: tuple[int, ...]) -> np.ndarray:
    """Arrays of ``shape`` (``None``: not present, a zero placeholder) -> ``float32 [U, *shape]``."""
    placeholder = np.zeros(shape, np.float32)
    return np.stack([placeholder if item is None else item for item in items]) if items \
        else np.zeros((0, *shape), np.float32)


class ContentPreparer:
    """``__call__(contents) -> {input: array [U, ...], "present": Bool[U], "problems": [(content, reason)]}``.

    ``errors``: ``"raise"`` (a :class:`ContentError` naming the item) or ``"missing"`` (the item counts as
    having no content and ``problems`` lists ``(content, reason)``), as a non-strict training run does.
    Subclasses, one per ``kind`` (registered in ``PREPARERS``), read one item (``read``), stack a batch
    (``batch``), write and read their spec (``spec``, ``from_spec``) and answer what else depends on the kind.
    """

    kind: str
    # Whether an item's content names a file to read (a service reads these only under its content root,
    # and the feature cache hashes the file's bytes) rather than being the content itself.
    reads_files = False

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], directory: Path) -> ContentPreparer:
        """The preparer ``spec`` (as :meth:`spec` wrote it) describes, reading its assets from ``directory``."""
        raise NotImplementedError

    @classmethod
    def asset_files(cls, spec: Mapping[str, Any]) -> list[str]:
        """The files under the assets directory that ``spec`` names."""
        return []

    def __call__(self, contents: Sequence[Any], errors: str = "raise") -> dict[str, Any]:
        items, problems = [], []
        for raw in contents:
            content = values.content(raw)
            try:
                items.append(None if content is None else self.read(content))
            except ContentError as error:
                if errors == "raise":
                    raise ContentError(f"{raw!r}: {error}") from None
                items.append(None)
                problems.append((raw, str(error)))
        present = np.array([item is not None for item in items], dtype=bool)
        return {**self.batch(items), "present": present, "problems": problems}

    def read(self, content: str) -> Any:
        raise NotImplementedError

    def batch(self, items: list) -> dict[str, np.ndarray]:
        """The items read (``None``: not present, given a placeholder) -> the encoder's arrays ``[U, ...]``."""
        raise NotImplementedError

    def spec(self, assets: Path) -> dict[str, Any]:
        """The manifest's spec that rebuilds this preparer (:func:`content_preparer`); files it names are
        written under ``assets``."""
        raise NotImplementedError

    def dynamic_axes(self) -> dict[str, dict[int, tuple[str, int]]]:
        """The axes of the arrays ``batch`` returns that vary, beyond the items axis 0:
        ``{input: {axis: (name, largest size)}}``; inputs whose axes share a name have equal sizes."""
        return {}

    def examples(self, field: str, bundle: Path, directory: str, count: int) -> list[str]:
        """``count`` distinct items of ``field`` for a bundle's golden rows; files are written under
        ``bundle/directory`` and named relative to ``bundle``."""
        raise NotImplementedError


class TextPreparer(ContentPreparer):
    """``tokenizer``: a ``tokenizers.Tokenizer``, copied, so that the settings made here never reach the
    caller's (a transformers tokenizer sets its backend's truncation and padding on every call)."""

    kind = "text"

    def __init__(self, tokenizer: Any, max_length: int, pad_id: int, pad_token: str, padding_side: str = "right",
                 truncation_side: str = "right"):
        from tokenizers import Tokenizer  # imported here: only bundles with text need it

        self.settings = {"max_length": max_length, "pad_id": pad_id, "pad_token": pad_token,
                         "padding_side": padding_side, "truncation_side": truncation_side}
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.enable_truncation(max_length, direction=truncation_side)
        self.tokenizer.enable_padding(direction=padding_side, pad_id=pad_id, pad_token=pad_token)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], directory: Path) -> TextPreparer:
        from tokenizers import Tokenizer

        # Bundles written before truncation_side was recorded truncated on the right, the default.
        return cls(Tokenizer.from_file(str(directory / spec["tokenizer"])), spec["max_length"], spec["pad_id"],
                   spec["pad_token"], spec["padding_side"], spec.get("truncation_side", "right"))

    @classmethod
    def asset_files(cls, spec: Mapping[str, Any]) -> list[str]:
        return [spec["tokenizer"]]

    def read(self, content: str) -> str:
        return content

    def batch(self, items: list) -> dict[str, np.ndarray]:
        # A missing text is tokenised as "" ([CLS] [SEP]): a valid input whose features are zeroed.
        encodings = self.tokenizer.encode_batch([item or "" for item in items])
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(items), -1),
                "attention_mask": np.array([e.attention_mask for e in encodings],
                                           dtype=np.int64).reshape(len(items), -1)}

    def spec(self, assets: Path) -> dict[str, Any]:
        assets.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(assets / "tokenizer.json"))
        return {"kind": self.kind, "version": SPEC_VERSION, "tokenizer": "tokenizer.json", **self.settings}

    def dynamic_axes(self) -> dict[str, dict[int, tuple[str, int]]]:
        # Token sequences are as long as the batch's longest text.
        tokens = ("tokens", self.settings["max_length"])
        return {"input_ids": {1: tokens}, "attention_mask": {1: tokens}}

    def examples(self, field: str, bundle: Path, directory: str, count: int) -> list[str]:
        return [f"golden item {i} for {field}" for i in range(count)]


class ImagePreparer(ContentPreparer):
    kind = "image"
    reads_files = True

    def __init__(self, resize: int, crop: int, mean: Sequence[float], std: Sequence[float]):
        self.resize, self.crop, self.mean, self.std = resize, crop, [float(m) for m in mean], [float(s) for s in std]

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], directory: Path) -> ImagePreparer:
        return cls(spec["resize"], spec["crop"], spec["mean"], spec["std"])

    def read(self, content: str) -> np.ndarray:
        return image_pixels(content, self.resize, self.crop, self.mean, self.std)

    def batch(self, items: list) -> dict[str, np.ndarray]:
        return {"pixels": _stacked(items, (3, self.crop, self.crop))}

    def spec(self, assets: Path) -> dict[str, Any]:
        return {"kind": self.kind, "version": SPEC_VERSION, "resize": self.resize, "crop": self.crop,
                "mean": self.mean, "std": self.std}

    def examples(self, field: str, bundle: Path, directory: str, count: int) -> list[str]:
        from PIL import Image

        rng = np.random.default_rng(0)
        (bundle / directory).mkdir(exist_ok=True)
        names = []
        for i in range(count):
            # Not square and larger than the crop, so resizing and cropping both run.
            size = (self.crop + 7 + 3 * i, self.crop + 2)
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            names.append(f"{directory}/{field}-{i}.png")
            Image.fromarray(pixels).save(bundle / names[-1])
        return names


class AudioPreparer(ContentPreparer):
    kind = "audio"
    reads_files = True

    def __init__(self, sample_rate: int, num_samples: int):
        self.sample_rate, self.num_samples = sample_rate, num_samples

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], directory: Path) -> AudioPreparer:
        return cls(spec["sample_rate"], spec["num_samples"])

    def read(self, content: str) -> np.ndarray:
        return waveform(content, self.sample_rate, self.num_samples)

    def batch(self, items: list) -> dict[str, np.ndarray]:
        return {"waveform": _stacked(items, (self.num_samples,))}

    def spec(self, assets: Path) -> dict[str, Any]:
        return {"kind": self.kind, "version": SPEC_VERSION, "sample_rate": self.sample_rate,
                "num_samples": self.num_samples}

    def examples(self, field: str, bundle: Path, directory: str, count: int) -> list[str]:
        import soundfile

        rng = np.random.default_rng(0)
        (bundle / directory).mkdir(exist_ok=True)
        names = []
        for i in range(count):
            seconds = self.num_samples / self.sample_rate * (0.5 + 0.5 * i)  # short and long clips
            t = np.arange(int(seconds * self.sample_rate)) / self.sample_rate
            wave = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.01 * rng.normal(size=len(t))
            names.append(f"{directory}/{field}-{i}.wav")
            soundfile.write(bundle / names[-1], wave.astype(np.float32), self.sample_rate)
        return names


PREPARERS: dict[str, type[ContentPreparer]] = {preparer.kind: preparer
                                              for preparer in (TextPreparer, ImagePreparer, AudioPreparer)}


def preparer_type(spec: Mapping[str, Any]) -> type[ContentPreparer]:
    """The preparer class of a bundle's ``spec``; a ContentError for a kind or version this fusionrec cannot read."""
    kind = spec.get("kind")
    if spec.get("version") != SPEC_VERSION or not isinstance(kind, str) or kind not in PREPARERS:
        raise ContentError(f"unsupported content spec (kind {kind!r}, version {spec.get('version')!r}); "
                           f"this fusionrec reads version {SPEC_VERSION}")
    return PREPARERS[kind]


def content_preparer(spec: Mapping[str, Any], directory: str | Path = ".") -> ContentPreparer:
    """The preparer a bundle's ``spec`` describes, reading its asset files from ``directory``."""
    return preparer_type(spec).from_spec(spec, Path(directory))
