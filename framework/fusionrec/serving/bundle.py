"""What every bundle loader shares: the manifest, the preparation of raw rows and the golden-row check.

A runtime (the torch.export program, the ONNX graph) subclasses :class:`Bundle` with ``run`` (the
scoring graph) and ``run_item_encoder`` (a content field's item encoder)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionrec.serving.content import ContentError, ContentPreparer
from fusionrec.serving.features import FeatureEncoder, RequestError, present_input

__all__ = ["ASSETS", "GOLDEN", "MANIFEST", "ONNX_GRAPH", "PROGRAM", "Bundle", "file_sha256", "item_encoder_files",
           "present_input"]

MANIFEST, PROGRAM, ONNX_GRAPH, GOLDEN, ASSETS = "manifest.json", "model.pt2", "model.onnx", "golden.json", "assets"


def file_sha256(path: Path) -> str:
    """The sha256 a manifest records for a bundle file, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def item_encoder_files(field: str) -> tuple[str, str]:
    """A content field's item-encoder program and ONNX graph, relative to the bundle."""
    return f"item_encoder.{field}.pt2", f"item_encoder.{field}.onnx"


class Bundle:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = json.loads((self.directory / MANIFEST).read_text())
        self.content_fields = self.manifest.get("content", {}).get("fields", {})
        self.preparers = {name: ContentPreparer(entry["content"], self.directory / ASSETS / name)
                          for name, entry in self.content_fields.items()}
        self.encode = FeatureEncoder(self.manifest["preprocessing"], item_vectors=self.item_vectors)

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["outputs"])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The scoring graph: ``{input: [B, ...]}`` (as ``encode`` returns) -> ``{task: [B] or [B, C]}``."""
        raise NotImplementedError

    def run_item_encoder(self, field: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """A content field's item encoder: prepared content ``{input: [U, ...]}`` -> ``[U, D]``."""
        raise NotImplementedError

    def score(self, rows: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """``{field: [B] raw values}`` -> ``{task: [B] (or [B, C]) served scores}``."""
        return self.run(self.encode(rows))

    def encode_items(self, field: str, contents: Sequence[Any]) -> np.ndarray:
        """Item vectors ``[U, D]`` of ``contents`` (texts, or image/audio file paths): what a service may
        compute once per item and send in place of the content. Unreadable content raises a
        RequestError naming the field and the item; ``None`` items get zero features."""
        if field not in self.preparers:
            raise RequestError(f"field '{field}': not a content field; content fields: {', '.join(self.preparers)}")
        try:
            prepared = self.preparers[field](list(contents))
        except ContentError as error:
            raise RequestError(f"field '{field}': {error}") from None
        prepared.pop("problems")
        return self.run_item_encoder(field, prepared)

    def item_vectors(self, field: str, values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """A content field's values in a request -> (item vectors ``[B, D]``, ``Bool[B]`` present): raw
        content is encoded (each distinct item once), a list of numbers is taken as the item's vector."""
        dim = self.content_fields[field]["dim"]
        vectors, present = np.zeros((len(values), dim), dtype=np.float32), np.zeros(len(values), dtype=bool)
        raw: dict[str, list[int]] = {}
        for row, value in enumerate(values):
            if value is None or (isinstance(value, float) and value != value):
                continue
            if isinstance(value, str):
                if value.strip():  # stripped, and an empty text or path is no content, as in training
                    raw.setdefault(value.strip(), []).append(row)
                continue
            try:
                vector = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError):
                vector = None
            if vector is None or vector.shape != (dim,):
                raise RequestError(f"field '{field}': row {row}: expected content (a string), an item vector of "
                                   f"{dim} numbers or null, got {value!r:.80}")
            vectors[row], present[row] = vector, True
        if raw:
            encoded = self.encode_items(field, list(raw))
            for position, rows in enumerate(raw.values()):
                vectors[rows], present[rows] = encoded[position], True
        return vectors, present

    def check(self, tolerance: float = 1e-5) -> None:
        """Raise if the golden rows do not score as they did at export."""
        golden = json.loads((self.directory / GOLDEN).read_text())
        inputs = dict(golden["inputs"])
        for field, entry in self.content_fields.items():  # golden image/audio files live in the bundle
            if entry["content"]["kind"] != "text":
                inputs[field] = [str(self.directory / v) if isinstance(v, str) else v for v in inputs[field]]
        scores = self.score(inputs)
        for task, expected in golden["outputs"].items():
            difference = np.abs(scores[task] - np.asarray(expected)).max()
            if not difference <= tolerance:
                raise AssertionError(f"{self.directory}: task '{task}' scores differ from the golden outputs "
                                     f"by up to {difference:.3g}")
