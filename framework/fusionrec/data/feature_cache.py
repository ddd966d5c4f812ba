"""Features of frozen content encoders, computed once per distinct item and kept in memory and on disk.

An entry's key hashes the encoder's ``cache_identity()`` (its name, model, a hash of its weights and
its preprocessing settings) with the item's content: the text itself, or a file's path and bytes.
A changed model, setting or file gives a new key, so a stale entry is never read. Each encoder
identity has one file, ``<directory>/<identity hash>.pt`` (plain tensors and strings:
``torch.load(weights_only=True)`` reads it), rewritten atomically when entries are added.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def content_key(identity: str, content: str, reads_files: bool) -> str:
    """``reads_files``: the content names a file (the preparer's ``reads_files``), whose bytes are hashed
    too, so an edited file misses the cache."""
    digest = hashlib.sha256(identity.encode())
    digest.update(content.encode())
    if reads_files:
        try:
            digest.update(Path(content).read_bytes())
        except OSError as error:
            digest.update(f"unreadable: {error}".encode())
    return digest.hexdigest()


class FeatureCache:
    """``features(encoder, contents)`` -> ``([N, width], present Bool[N])`` for the N contents,
    computing only the entries neither in memory nor on disk."""

    def __init__(self, directory: str | Path, batch_size: int = 64):
        self.directory, self.batch_size = Path(directory), batch_size
        self.memory: dict[str, dict[str, tuple[Tensor, bool]]] = {}  # identity -> key -> entry
        self.computed = 0  # items encoded by this cache (the rest were hits); tests read it

    def features(self, encoder, contents: list[str]) -> tuple[Tensor, Tensor]:
        identity = identity_hash(encoder.cache_identity())
        entries = self.memory.setdefault(identity, self._load(identity))
        keys = [content_key(identity, content, encoder.preparer.reads_files) for content in contents]
        todo = [i for i, key in enumerate(keys) if key not in entries]
        if todo:
            self._compute(encoder, [contents[i] for i in todo], [keys[i] for i in todo], entries)
            self._save(identity, entries)
        if not keys:
            return torch.zeros(0, encoder.backbone_width), torch.zeros(0, dtype=torch.bool)
        vectors = torch.stack([entries[key][0] for key in keys])
        present = torch.tensor([entries[key][1] for key in keys], dtype=torch.bool)
        return vectors, present

    @torch.no_grad()
    def _compute(self, encoder, contents: list[str], keys: list[str], entries: dict) -> None:
        was_training = encoder.training
        encoder.eval()
        try:
            for start in range(0, len(contents), self.batch_size):
                prepared = encoder.prepare(contents[start:start + self.batch_size])
                prepared.pop("problems", None)  # counted and reported per row when batches are built
                vectors = encoder.encode(prepared).float().cpu()
                for key, vector, present in zip(keys[start:], vectors, prepared["present"].tolist()):
                    entries[key] = (vector.clone(), bool(present))
                self.computed += len(vectors)
        finally:
            encoder.train(was_training)

    def _path(self, identity: str) -> Path:
        return self.directory / f"{identity}.pt"

    def _load(self, identity: str) -> dict[str, tuple[Tensor, bool]]:
        path = self._path(identity)
        if not path.is_file():
            return {}
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return {key: (vector, bool(present))
                for key, vector, present in zip(stored["keys"], stored["vectors"], stored["present"].tolist())}

    def _save(self, identity: str, entries: dict[str, tuple[Tensor, bool]]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        keys = list(entries)
        stored = {"keys": keys, "vectors": torch.stack([entries[k][0] for k in keys]),
                  "present": torch.tensor([entries[k][1] for k in keys], dtype=torch.bool)}
        handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        os.close(handle)
        try:
            torch.save(stored, temporary)
            os.replace(temporary, self._path(identity))  # never a half-written cache file
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
