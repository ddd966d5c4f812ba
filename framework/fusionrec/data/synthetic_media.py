"""Real media files for the synthetic items: a title, a PNG and a WAV per item, each revealing part
of the item's hidden latent vector (``item_vec`` in :mod:`fusionrec.data.synthetic`, latent = 4).

Item ``i`` is row ``i`` of ``item_vec``, as ``item_id`` is in the synthetic impression log.
Which latent dimensions each modality reveals:

- title: dims 0 and 3. One weather word names the level of dim 0 ("stormy" ... "scorching") and
  one tempo word the level of dim 3 ("sluggish" ... "frantic"), five levels each, among filler
  nouns; each signal word is dropped 15% of the time, so a bag of words recovers signs and rough
  magnitudes, not exact values.
- image: dims 0, 1 and 2. Red minus blue follows dim 0, green follows dim 1, and the frequency of
  horizontal stripes (1 to 6 per image) follows dim 2; colour jitter and pixel noise on top.
- audio: dims 1 and 3. The pitch of a tone (220 to 880 Hz) follows dim 3 and the rate of its
  amplitude pulses (1 to 7 per second) follows dim 1; white noise on top.

No modality sees all four dimensions and each sees its own through noise, so combining them beats
any one alone. Some items have no title (``""``), no image or no audio (``None`` in the table),
and optionally a corrupt file (garbage bytes), so readers exercise their missing and error paths.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
from PIL import Image

MEDIA_VERSION = 1
MARKER = "COMPLETE"
TABLE = "items.parquet"

# Level thresholds shared by both title dimensions: five levels from strongly negative to strongly positive.
TITLE_LEVELS = np.array([-1.2, -0.4, 0.4, 1.2])
TITLE_WORDS: dict[int, tuple[tuple[str, str], ...]] = {
    0: (("stormy", "thundering"), ("cloudy", "grey"), ("mild", "temperate"), ("sunny", "bright"), ("scorching", "blazing")),
    3: (("sluggish", "sleepy"), ("slow", "calm"), ("steady", "moderate"), ("quick", "lively"), ("frantic", "electric")),
}
FILLER_WORDS = ("song", "garden", "river", "city", "night", "journey", "story", "edition", "collection", "tale",
                "harbor", "letters")


def _missing_and_corrupt(count: int, missing: float, corrupt: float, rng: np.random.Generator) -> tuple[set[int], set[int]]:
    """Exactly ``round(fraction * count)`` items each, so a configured fraction holds at any size; disjoint."""
    order = rng.permutation(count)
    n_missing, n_corrupt = round(missing * count), round(corrupt * count)
    return set(order[:n_missing].tolist()), set(order[n_missing:n_missing + n_corrupt].tolist())


def item_titles(item_vec: np.ndarray, rng: np.random.Generator, *, missing_fraction: float = 0.03) -> list[str]:
    """A 3-6 word title per item; ``""`` for a ``missing_fraction`` of them."""
    levels = {dim: np.digitize(item_vec[:, dim], TITLE_LEVELS) for dim in TITLE_WORDS}
    titles = []
    for item in range(len(item_vec)):
        words = [TITLE_WORDS[dim][levels[dim][item]][rng.integers(2)] for dim in TITLE_WORDS if rng.random() >= 0.15]
        fillers = rng.integers(max(1, 3 - len(words)), 7 - len(words))
        titles.append(" ".join(words + list(rng.choice(FILLER_WORDS, fillers, replace=False))))
    missing, _ = _missing_and_corrupt(len(titles), missing_fraction, 0.0, rng)
    return ["" if item in missing else title for item, title in enumerate(titles)]


def write_item_images(item_vec: np.ndarray, directory: str | Path, rng: np.random.Generator, *, size: int = 32,
                      missing_fraction: float = 0.02, corrupt_fraction: float = 0.0) -> list[str | None]:
    """One ``size`` x ``size`` RGB PNG per item under ``directory/images``; paths relative to ``directory``."""
    squash = np.tanh(item_vec)  # bounded, monotone in the latent value: colours and frequencies stay in range
    # Red minus blue follows dim 0 and green dim 1; the jitter keeps colour from giving them away exactly.
    colour = 0.5 + 0.3 * np.stack([squash[:, 0], squash[:, 1], -squash[:, 0]], axis=1)
    colour += rng.normal(0, 0.08, colour.shape)
    cycles = 3.5 + 2.5 * squash[:, 2]
    phase = rng.uniform(0, 2 * np.pi, len(item_vec))
    rows = np.arange(size) / size
    missing, corrupt = _missing_and_corrupt(len(item_vec), missing_fraction, corrupt_fraction, rng)

    def image(item: int) -> bytes:
        stripes = 0.75 + 0.25 * np.sin(2 * np.pi * cycles[item] * rows + phase[item])  # [size]
        pixels = colour[item] * stripes[:, None, None] + rng.normal(0, 0.04, (size, size, 3))
        encoded = io.BytesIO()
        Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)).save(encoded, format="PNG")
        return encoded.getvalue()

    return _write_files(Path(directory), "images", "png", len(item_vec), missing, corrupt, rng, image)


def write_item_audio(item_vec: np.ndarray, directory: str | Path, rng: np.random.Generator, *,
                     sample_rate: int = 8000, duration: float = 1.0, missing_fraction: float = 0.02,
                     corrupt_fraction: float = 0.0) -> list[str | None]:
    """One mono 16-bit WAV per item under ``directory/audio``; paths relative to ``directory``."""
    squash = np.tanh(item_vec)
    pitch = 440.0 * 2.0 ** squash[:, 3] * np.exp(rng.normal(0, 0.03, len(item_vec)))  # an octave each way, slightly detuned
    pulse = 4.0 + 3.0 * squash[:, 1]
    phases = rng.uniform(0, 2 * np.pi, (len(item_vec), 2))
    time = np.arange(round(sample_rate * duration)) / sample_rate
    missing, corrupt = _missing_and_corrupt(len(item_vec), missing_fraction, corrupt_fraction, rng)

    def sound(item: int) -> bytes:
        envelope = 0.5 * (1 + np.sin(2 * np.pi * pulse[item] * time + phases[item, 0]))
        wave = 0.5 * envelope * np.sin(2 * np.pi * pitch[item] * time + phases[item, 1]) + rng.normal(0, 0.05, len(time))
        encoded = io.BytesIO()  # writing to a path fsyncs every file: three times slower than the rest together
        soundfile.write(encoded, np.clip(wave, -1, 1), sample_rate, subtype="PCM_16", format="WAV")
        return encoded.getvalue()

    return _write_files(Path(directory), "audio", "wav", len(item_vec), missing, corrupt, rng, sound)


def _write_files(directory: Path, folder: str, suffix: str, count: int, missing: set[int], corrupt: set[int],
                 rng: np.random.Generator, make: Callable[[int], bytes]) -> list[str | None]:
    """``folder/item_NNNNN.suffix`` per item, relative to ``directory``: None for a missing item,
    256 random bytes for a corrupt one, else ``make(item)``; items in order, so the stream of
    ``rng`` (and every byte) depends on the seed alone."""
    (directory / folder).mkdir(parents=True, exist_ok=True)
    paths: list[str | None] = []
    for item in range(count):
        if item in missing:
            paths.append(None)
            continue
        path = f"{folder}/item_{item:05d}.{suffix}"
        (directory / path).write_bytes(rng.bytes(256) if item in corrupt else make(item))
        paths.append(path)
    return paths


def write_item_media(item_vec: np.ndarray, directory: str | Path, seed: int, *, image_size: int = 32,
                     sample_rate: int = 8000, duration: float = 1.0, missing_title: float = 0.03,
                     missing_image: float = 0.02, missing_audio: float = 0.02, corrupt_image: float = 0.0,
                     corrupt_audio: float = 0.0) -> pd.DataFrame:
    """Titles and media files for every item, written once into ``directory``.

    Returns the table ``item_id, item_title, item_image, item_audio`` (media paths relative to
    ``directory``), also stored there as ``items.parquet``. The directory is built in a sibling and
    renamed into place, so a killed run never leaves a half-written one; a directory whose marker
    records the same parameters and latent vectors is reused untouched, any other is rebuilt.
    """
    directory = Path(directory)
    params = {"version": MEDIA_VERSION, "seed": seed, "image_size": image_size, "sample_rate": sample_rate,
              "duration": duration, "missing": [missing_title, missing_image, missing_audio],
              "corrupt": [corrupt_image, corrupt_audio],
              "item_vec": hashlib.sha256(np.ascontiguousarray(item_vec, dtype=np.float64).tobytes()).hexdigest()}
    stamp = json.dumps(params, sort_keys=True)
    if not _complete(directory, stamp):
        partial = directory.with_name(f"{directory.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # left by an earlier killed run that had our pid
        partial.mkdir(parents=True)
        try:
            # One stream per modality: changing how images are drawn leaves titles and audio unchanged.
            title_rng, image_rng, audio_rng = np.random.default_rng(seed).spawn(3)
            pd.DataFrame({
                "item_id": np.arange(len(item_vec)),
                "item_title": item_titles(item_vec, title_rng, missing_fraction=missing_title),
                "item_image": write_item_images(item_vec, partial, image_rng, size=image_size,
                                                missing_fraction=missing_image, corrupt_fraction=corrupt_image),
                "item_audio": write_item_audio(item_vec, partial, audio_rng, sample_rate=sample_rate, duration=duration,
                                               missing_fraction=missing_audio, corrupt_fraction=corrupt_audio),
            }).to_parquet(partial / TABLE, index=False)
            (partial / MARKER).write_text(stamp)  # last: its presence means everything else is there
            _move_into_place(partial, directory, stamp)
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # a failed build leaves nothing behind
    return pd.read_parquet(directory / TABLE)


def _complete(directory: Path, stamp: str) -> bool:
    marker = directory / MARKER
    return marker.is_file() and marker.read_text() == stamp


def _move_into_place(partial: Path, directory: Path, stamp: str) -> None:
    if _complete(directory, stamp):  # another process (a DDP rank) finished the same build meanwhile
        return
    if directory.exists():  # incomplete or stale: move it aside so that the swap is one rename
        stale = directory.with_name(f"{directory.name}.{os.getpid()}.stale")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(directory, stale)
        shutil.rmtree(stale)
    try:
        os.replace(partial, directory)
    except OSError:
        if not _complete(directory, stamp):  # another process (a DDP rank) finished the same build first
            raise
