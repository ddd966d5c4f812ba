"""The frozen-feature cache keys entries by encoder identity and content, and media are prepared in
the DataLoader workers that build the batches."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from PIL import Image

from fusionrec.components import FieldInfo
from fusionrec.data.batches import TensorTable, batch_loader
from fusionrec.data.feature_cache import FeatureCache
from fusionrec.data.media import media_column
from fusionrec_features.content import Image as ImageType
from fusionrec_media.image import ImageEncoder


def images(directory, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = directory / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def encoder(**options) -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder(FieldInfo("poster", "image"), 4, backbone="resnet18", image_size=16, **options)


def test_entries_are_reused_until_the_file_the_weights_or_a_setting_change(tmp_path):
    paths = images(tmp_path, 3)
    cache = FeatureCache(tmp_path / "cache")
    first, present = cache.features(encoder(), paths)
    assert first.shape == (3, 512) and present.all() and cache.computed == 3

    again = FeatureCache(tmp_path / "cache")  # a new process: read back from disk
    torch.testing.assert_close(again.features(encoder(), paths)[0], first)
    assert again.computed == 0

    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(paths[1])  # an edited file
    changed, _ = again.features(encoder(), paths)
    assert again.computed == 1 and not torch.allclose(changed[1], first[1])
    torch.testing.assert_close(changed[[0, 2]], first[[0, 2]])

    other_weights = encoder()
    with torch.no_grad():
        other_weights.backbone.conv1.weight.mul_(2)
    again.features(other_weights, paths)
    assert again.computed == 1 + 3
    again.features(encoder(mean=[0.5, 0.5, 0.5]), paths)  # another preprocessing setting
    assert again.computed == 1 + 3 + 3


def test_media_are_prepared_in_the_dataloader_workers(tmp_path):
    paths = images(tmp_path, 4)
    column = media_column(pd.Series(paths * 5), ImageType("item_image", {"root": None, "strict": False}))
    assert len(column.contents) == 4 and column.codes.tolist()[:5] == [0, 1, 2, 3, 0]
    prepare = encoder(mode="finetune").prepare

    def prepare_and_sign(contents):
        prepared = prepare(contents)
        prepared["pid"] = torch.tensor(os.getpid())  # which process did the decoding
        return prepared

    column.prepare = prepare_and_sign
    table = TensorTable({}, {}, 20, {"poster": column})
    (batch, *_) = list(batch_loader(table, batch_size=20, shuffle=False, num_workers=1))
    media = batch.features["poster"]
    assert int(media.inputs["pid"]) != os.getpid()
    assert media.inputs["pixels"].shape[0] == 4
    assert media.inverse.tolist() == [0, 1, 2, 3] * 5  # 20 rows, 4 distinct items decoded once each
