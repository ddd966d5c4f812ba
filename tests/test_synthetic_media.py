"""Synthetic item media: real files that carry their intended part of the hidden signal, written once."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import soundfile
from PIL import Image, UnidentifiedImageError

from fusionrec.data import synthetic_media
from fusionrec.data.synthetic_media import TITLE_WORDS, write_item_media

ITEMS = 200
CORRUPT = {"corrupt_image": 0.02, "corrupt_audio": 0.02}


@pytest.fixture(scope="module")
def item_vec() -> np.ndarray:
    return np.random.default_rng(3).normal(0, 1, (ITEMS, 4))


@pytest.fixture(scope="module")
def media(item_vec, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    directory = tmp_path_factory.mktemp("media") / "items"
    return directory, write_item_media(item_vec, directory, seed=0, **CORRUPT)


def _decode(directory: Path, paths: pd.Series, load: Callable[[Path], np.ndarray]) -> tuple[dict[int, np.ndarray], int]:
    """Decoded files by item id, and how many failed to decode."""
    decoded, failed = {}, 0
    for item, path in paths.dropna().items():
        try:
            decoded[item] = load(directory / path)
        except (UnidentifiedImageError, soundfile.LibsndfileError):
            failed += 1
    return decoded, failed


def _image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
        return np.asarray(image) / 255.0


def _audio(path: Path) -> np.ndarray:
    wave, rate = soundfile.read(path)
    assert rate == 8000 and wave.shape == (8000,)
    return wave


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    return {path.relative_to(directory).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino)
            for path in sorted(directory.rglob("*")) if path.is_file()}


def _assert_reveals(statistic: np.ndarray, latent: np.ndarray, dim: int, unrelated: int) -> None:
    assert abs(np.corrcoef(statistic, latent[:, dim])[0, 1]) > 0.6
    assert abs(np.corrcoef(statistic, latent[:, unrelated])[0, 1]) < 0.3


def test_files_decode_except_the_missing_and_corrupt_ones(media):
    directory, table = media
    assert table.columns.tolist() == ["item_id", "item_title", "item_image", "item_audio"]
    assert table["item_id"].tolist() == list(range(ITEMS))
    assert (table["item_title"] == "").sum() == 6
    assert table["item_title"].map(lambda title: title == "" or 3 <= len(title.split()) <= 6).all()
    for column, folder, load in (("item_image", "images", _image), ("item_audio", "audio", _audio)):
        paths = table[column].dropna()
        assert len(paths) == ITEMS - 4  # 2% missing: no path and no file
        assert sorted(path.relative_to(directory).as_posix() for path in (directory / folder).iterdir()) == sorted(paths)
        decoded, failed = _decode(directory, table[column], load)
        assert failed == 4 and len(decoded) == ITEMS - 8


def test_each_modality_reveals_its_latent_dimensions(media, item_vec):
    directory, table = media
    images, _ = _decode(directory, table["item_image"], _image)
    pixels, latent = np.stack(list(images.values())), item_vec[list(images)]  # [N, H, W, 3]
    _assert_reveals((pixels[..., 0] - pixels[..., 2]).mean(axis=(1, 2)), latent, dim=0, unrelated=3)
    _assert_reveals(pixels[..., 1].mean(axis=(1, 2)), latent, dim=1, unrelated=3)
    profile = pixels.mean(axis=(2, 3))  # [N, H]: the stripes run horizontally
    stripes = np.abs(np.fft.rfft(profile - profile.mean(axis=1, keepdims=True), axis=1))[:, 1:].argmax(axis=1) + 1
    _assert_reveals(stripes, latent, dim=2, unrelated=3)

    sounds, _ = _decode(directory, table["item_audio"], _audio)
    waves, latent = np.stack(list(sounds.values())), item_vec[list(sounds)]  # [N, samples]; 1 s, so bin k is k Hz
    _assert_reveals(np.log(np.abs(np.fft.rfft(waves, axis=1)).argmax(axis=1)), latent, dim=3, unrelated=0)
    power = waves**2  # its slow part is the pulse envelope
    pulses = np.abs(np.fft.rfft(power - power.mean(axis=1, keepdims=True), axis=1))[:, 1:13].argmax(axis=1) + 1
    _assert_reveals(pulses, latent, dim=1, unrelated=0)

    level = {word: (dim, rank - 2)  # rank 0..4 from strongly negative to strongly positive
             for dim, ranks in TITLE_WORDS.items() for rank, words in enumerate(ranks) for word in words}
    titled = table.index[table["item_title"] != ""]
    words = np.zeros((len(titled), 4))
    for row, title in enumerate(table.loc[titled, "item_title"]):
        for dim, rank in (level[word] for word in title.split() if word in level):
            words[row, dim] += rank
    _assert_reveals(words[:, 0], item_vec[titled.to_numpy()], dim=0, unrelated=1)
    _assert_reveals(words[:, 3], item_vec[titled.to_numpy()], dim=3, unrelated=2)


def test_same_seed_gives_same_bytes(media, item_vec, tmp_path):
    directory, table = media
    pd.testing.assert_frame_equal(write_item_media(item_vec, tmp_path / "items", seed=0, **CORRUPT), table)
    assert {name: data for name, (data, *_) in _snapshot(tmp_path / "items").items()} == \
        {name: data for name, (data, *_) in _snapshot(directory).items()}
    assert write_item_media(item_vec, tmp_path / "other", seed=1)["item_title"].tolist() != table["item_title"].tolist()


def test_complete_directory_is_reused_untouched(media, item_vec):
    directory, table = media
    before = _snapshot(directory)
    pd.testing.assert_frame_equal(write_item_media(item_vec, directory, seed=0, **CORRUPT), table)
    assert _snapshot(directory) == before


def test_incomplete_or_stale_directory_is_rebuilt(media, item_vec, tmp_path):
    directory, table = media
    copy = tmp_path / "items"
    shutil.copytree(directory, copy)
    (copy / synthetic_media.MARKER).unlink()  # as if an older, non-atomic writer was killed
    (copy / "images" / "item_00000.png").write_bytes(b"half")
    pd.testing.assert_frame_equal(write_item_media(item_vec, copy, seed=0, **CORRUPT), table)
    assert {name: data for name, (data, *_) in _snapshot(copy).items()} == \
        {name: data for name, (data, *_) in _snapshot(directory).items()}
    rebuilt = write_item_media(item_vec, copy, seed=1)  # other parameters: the marker no longer matches
    assert rebuilt["item_title"].tolist() != table["item_title"].tolist()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["items"]  # no partial or stale siblings


def test_failed_build_leaves_nothing(item_vec, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_media, "write_item_audio", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_item_media(item_vec, tmp_path / "items", seed=0)
    assert list(tmp_path.iterdir()) == []
