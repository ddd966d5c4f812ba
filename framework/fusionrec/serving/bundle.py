"""What every bundle loader shares: verifying the bundle's files, the manifest, the preparation of raw
rows and the golden-row check.

A runtime (the torch.export program, the ONNX graph) subclasses :class:`Bundle` with ``load_graphs``
(reading its graph files through ``Bundle.file`` and checking them with ``Bundle.check_graph``), ``run``
(the scoring graph), ``run_item_encoder`` (a content field's item encoder) and ``run_tower`` (a
retrieval bundle's user or item tower).

A retrieval bundle (exported from a checkpoint with ``model.retrieval``) has a manifest section
``retrieval``: ``temperature``, ``dim``, ``towers`` (``user``/``item``: ``fields``, ``program``, ``onnx``,
``inputs``), ``golden_tolerance`` and ``catalogue`` (``vectors``: float32 ``[N, D]`` ``.npy``, ``keys``: a
JSON list of the N item keys, ``item_key``; null when exported without ``--items``).

Integrity: ``SHA256SUMS`` (the ``sha256sum`` format, so ``sha256sum -c SHA256SUMS`` checks a bundle too)
lists every other file of the bundle, ``manifest.json`` included. A loader refuses a bundle without it,
an entry that is not a path inside the bundle, a file in the bundle it does not list, a listed file
that changed, and a file the manifest names that it does not list."""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from fusionrec.errors import ConfigError
from fusionrec.features.values import id_token
from fusionrec.serving.content import ContentError, ContentPreparer, preparer_type
from fusionrec.serving.features import (MAX_TEXT_CHARS, FeatureEncoder, FeatureValueError, RequestError, checked_key,
                                        checked_string, float32_vector, listed, present_input, request_error, shown)

__all__ = ["ASSETS", "CHECKSUMS", "FORMAT_VERSION", "GOLDEN", "ITEM_KEYS", "ITEM_VECTORS", "MANIFEST", "NO_CATALOGUE",
           "NO_FUSED_SCORE",
           "ONNX_GRAPH", "PROGRAM", "TOWERS", "Bundle", "BundleError", "file_sha256", "item_encoder_files",
           "present_input", "read_checksums", "top_rows", "tower_files", "write_checksums"]

MANIFEST, PROGRAM, ONNX_GRAPH, GOLDEN, ASSETS = "manifest.json", "model.pt2", "model.onnx", "golden.json", "assets"
CHECKSUMS = "SHA256SUMS"
TOWERS = ("user", "item")
ITEM_VECTORS, ITEM_KEYS = "item_vectors.npy", "item_keys.json"
NO_FUSED_SCORE = "a retrieval bundle's /recommend ranks by its towers' score, so it takes no fused score"
NO_CATALOGUE = ("this bundle holds no item vectors to recommend from: export the checkpoint again with "
                "--items ITEMS_TABLE (the catalogue: its key column and the item-side fields)")
# 2: SHA256SUMS covers every file, manifest.json included; per-output golden tolerances. 3: each preprocessing
# entry names its feature type's implementation.
FORMAT_VERSION = 3
_CHECKSUM_LINE = re.compile(r"([0-9a-f]{64})  (.+)")


class BundleError(ConfigError):
    """A bundle directory that is incomplete, changed since export or inconsistent; the message names the file."""


def file_sha256(path: Path) -> str:
    """The sha256 the checksum file records for a bundle file, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def item_encoder_files(field: str) -> tuple[str, str]:
    """A content field's item-encoder program and ONNX graph, relative to the bundle."""
    return f"item_encoder.{field}.pt2", f"item_encoder.{field}.onnx"


def tower_files(side: str) -> tuple[str, str]:
    """A retrieval bundle's ``side`` tower (``user`` or ``item``): its program and ONNX graph."""
    return f"{side}_tower.pt2", f"{side}_tower.onnx"


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """The rows of the ``k`` (<= ``len(scores)``) highest ``scores``, best first: a partition finds them
    in linear time, and only those k are sorted."""
    if k <= 0:
        return np.empty(0, np.int64)
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return best[np.argsort(-scores[best], kind="stable")]


def _bundle_files(directory: Path) -> list[str]:
    """Every file under ``directory`` (links included, not followed) but the checksum file, as POSIX
    paths relative to it."""
    names = []
    for folder, _, files in os.walk(directory):
        names += [(Path(folder) / file).relative_to(directory).as_posix() for file in files]
    return sorted(name for name in names if name != CHECKSUMS)


def write_checksums(directory: Path) -> None:
    """Write ``directory/SHA256SUMS`` over every other file in it: the last step of an export."""
    (directory / CHECKSUMS).write_text("".join(f"{file_sha256(directory / name)}  {name}\n"
                                               for name in _bundle_files(directory)), encoding="utf-8")


def _not_inside(name: str) -> str | None:
    """Why ``name`` is not a path to a file inside a bundle (relative, normalised, never up), or None."""
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a path out of the bundle ('..')"
    if "\\" in name or name in ("", ".") or str(PurePosixPath(name)) != name:
        return "not a normalised relative path"
    return None


def read_checksums(directory: Path) -> dict[str, str]:
    """``directory/SHA256SUMS`` -> ``{file: sha256}``; a missing file, a malformed line, or an entry that
    is not a path inside the bundle is a BundleError naming the line."""
    sums = directory / CHECKSUMS
    if not sums.is_file():
        raise BundleError(f"{sums}: missing, so the bundle cannot be verified; export the bundle again")
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as error:
        raise BundleError(f"{sums}: not a checksum file ({error})") from None
    listed: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        match = _CHECKSUM_LINE.fullmatch(line)
        if match is None:
            raise BundleError(f"{sums}: line {number}: expected '<sha256>  <file>', got {line!r:.80}")
        digest, name = match.groups()
        problem = _not_inside(name) or ("listed twice" if name in listed else None)
        if problem:
            raise BundleError(f"{sums}: line {number}: {name!r} is {problem}")
        listed[name] = digest
    return listed


def verify_files(directory: Path) -> frozenset[str]:
    """Check ``directory`` against its checksum file and return the files it lists: every file in the
    bundle must be listed, and every listed file that is there must be inside the bundle (a link may
    not lead out) and unchanged. A listed file may be absent: the loader that reads it says so
    (``Bundle.file``), so a deployment may leave out what its runtime does not read."""
    listed = read_checksums(directory)
    for name in _bundle_files(directory):
        if name not in listed:
            raise BundleError(f"{directory / name}: not listed in {CHECKSUMS}; a bundle holds only the files "
                              f"fusionrec export wrote")
    root = directory.resolve()
    for name, digest in listed.items():
        path = directory / name
        try:
            if not path.resolve().is_relative_to(root):
                raise BundleError(f"{path}: leads out of the bundle (to {path.resolve()})")
            changed = path.is_file() and file_sha256(path) != digest
        except (OSError, RuntimeError) as error:  # unreadable; Python < 3.13 raises RuntimeError on a link loop
            raise BundleError(f"{path}: cannot be read ({error})") from None
        if changed:
            raise BundleError(f"{path}: changed since export (its sha256 differs from the one {CHECKSUMS} "
                              f"records); export the bundle again")
    return frozenset(listed)


class Bundle:
    """A bundle directory, checked against its ``SHA256SUMS`` unless ``verify`` is False (for a copy already
    verified, e.g. when a service restarts); the manifest, the content preparers and the request encoder."""

    def __init__(self, directory: str | Path, verify: bool = True):
        self.directory = Path(directory)
        if not (self.directory / MANIFEST).is_file():
            raise BundleError(f"{self.directory}: no {MANIFEST} there; write a bundle with "
                              f"fusionrec export --ckpt CHECKPOINT --out {self.directory}")
        self.listed = verify_files(self.directory) if verify else None
        self.manifest = self._read_manifest()
        self.content_fields = self.manifest.get("content", {}).get("fields", {})
        self.preparers: dict[str, ContentPreparer] = {}
        for name, entry in self.content_fields.items():
            kind = preparer_type(entry["content"])
            for asset in kind.asset_files(entry["content"]):  # read by the preparer: checked like every file
                self.file(f"{ASSETS}/{name}/{asset}")
            self.preparers[name] = kind.from_spec(entry["content"], self.directory / ASSETS / name)
        try:
            self.encode = FeatureEncoder(self.manifest["preprocessing"], item_vectors=self.item_vectors)
        except ValueError as error:  # an implementation this environment cannot import, or the wrong one
            raise BundleError(f"{self.directory / MANIFEST}: preprocessing: {error}") from None
        self.retrieval: dict[str, Any] | None = self.manifest.get("retrieval")
        self.load_graphs()
        self.catalogue_keys: list[Any] = []
        self.catalogue_vectors: np.ndarray | None = None  # float32 [N, D]
        self._catalogue_rows: dict[str, int] = {}  # an item key's id token -> its row
        if self.retrieval and self.retrieval.get("catalogue"):
            self._read_catalogue(self.retrieval["catalogue"])

    def _read_catalogue(self, entry: Mapping[str, Any]) -> None:
        vectors_file, keys_file = self.file(entry["vectors"]), self.file(entry["keys"])
        try:
            vectors = np.load(vectors_file, allow_pickle=False)
            keys = json.loads(keys_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise BundleError(f"{self.directory / MANIFEST}: catalogue: cannot read it ({error})") from None
        dim = self.retrieval["dim"]
        if not isinstance(keys, list) or vectors.dtype != np.float32 or vectors.shape != (len(keys), dim):
            raise BundleError(f"{vectors_file}: expected float32 [{len(keys)}, {dim}] (one vector per key of "
                              f"{entry['keys']}), got {vectors.dtype} {list(vectors.shape)}")
        self.catalogue_keys, self.catalogue_vectors = keys, vectors
        self._catalogue_rows = {id_token(key, row): row for row, key in enumerate(keys)}

    def _read_manifest(self) -> dict[str, Any]:
        path = self.file(MANIFEST)
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BundleError(f"{path}: not a bundle manifest ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != "fusionrec-bundle":
            raise BundleError(f"{path}: not a fusionrec bundle manifest (no \"format\": \"fusionrec-bundle\")")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}: format_version {manifest.get('format_version')!r}; this fusionrec reads "
                              f"bundles of format_version {FORMAT_VERSION}: export the bundle again")
        return manifest

    def file(self, name: Any) -> Path:
        """The path of the bundle file ``name`` (as the manifest or golden rows name it), which a loader is
        about to read: it must be there and, when verifying, one ``SHA256SUMS`` lists (so it was checked)."""
        if not isinstance(name, str) or (self.listed is not None and name not in self.listed):
            raise BundleError(f"{self.directory / MANIFEST}: names the file {name!r}, which {CHECKSUMS} does not "
                              f"list; export the bundle again")
        if problem := _not_inside(name):  # also without verification
            raise BundleError(f"{self.directory / MANIFEST}: names the file {name!r}, {problem}")
        path = self.directory / name
        if not path.is_file():
            raise BundleError(f"{path}: missing; export the bundle again")
        return path

    def load_graphs(self) -> None:
        """Load the runtime's scoring graph and item encoders, each through ``file`` and ``check_graph``."""
        raise NotImplementedError

    def check_graph(self, graph: str, inputs: Sequence[str], outputs: Sequence[str] | None = None,
                    field: str | None = None, tower: str | None = None) -> None:
        """Refuse a manifest that does not describe the loaded ``graph``: its signature (``inputs``, a
        content field's item-encoder ``inputs`` when ``field`` is given, or a retrieval ``tower``'s) must
        name the graph's inputs, which must be the ones the request encoder makes from ``preprocessing``,
        and its ``outputs`` the graph's tasks."""
        where = self.directory / MANIFEST
        if tower is not None:
            key = f"retrieval.towers.{tower}.inputs"
            declared = [entry["name"] for entry in self.retrieval["towers"][tower]["inputs"]]
        elif field is None:
            key, declared = "inputs", [entry["name"] for entry in self.manifest["inputs"]]
            encoded = [name for field_name, entry in self.manifest["preprocessing"].items() for name in
                       ((field_name, present_input(field_name)) if self.encode.types[field_name].content
                        else (field_name,))]
            for name in encoded:
                if name not in declared:
                    raise BundleError(f"{where}: preprocessing makes input '{name}', which \"inputs\" does not declare")
        else:
            key, declared = f"content.fields.{field}.inputs", self.content_fields[field]["inputs"]
        for name in declared:
            if name not in inputs:
                raise BundleError(f"{where}: \"{key}\" declares input '{name}', which {graph} does not take")
        for name in inputs:
            if name not in declared:
                raise BundleError(f"{where}: {graph} takes input '{name}', which \"{key}\" does not declare")
        for task in self.tasks if outputs is not None else ():
            if task not in outputs:
                raise BundleError(f"{where}: \"outputs\" declares task '{task}', which {graph} does not give")

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["outputs"])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The scoring graph: ``{input: [B, ...]}`` (as ``encode`` returns) -> ``{task: [B] or [B, C]}``."""
        raise NotImplementedError

    def run_item_encoder(self, field: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """A content field's item encoder: prepared content ``{input: [U, ...]}`` -> ``[U, D]``."""
        raise NotImplementedError

    def run_tower(self, side: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """A retrieval bundle's ``side`` tower: ``{input: [B, ...]}`` (that side's fields) -> ``[B, D]``."""
        raise NotImplementedError

    def score(self, rows: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """``{field: [B] raw values}`` -> ``{task: [B] (or [B, C]) served scores}``."""
        return self.run(self.encode(rows))

    def tower_vectors(self, side: str, rows: Mapping[str, Sequence[Any]], labels: Mapping[str, str] | None = None
                      ) -> np.ndarray:
        """A retrieval bundle's ``side`` tower (``user`` or ``item``): ``{field: [B] raw values}`` of that
        side's fields (each required; no other) -> float32 ``[B, D]``. ``labels``: as for ``encode``."""
        if not self.retrieval:
            raise BundleError(f"{self.directory}: not a retrieval bundle (no user and item towers); export a "
                              f"checkpoint trained with model.retrieval")
        fields = self.retrieval["towers"][side]["fields"]
        unknown = [(labels or {}).get(name, name) for name in rows if name not in fields]
        if unknown:
            raise RequestError(f"unknown field(s) {listed(unknown)}; the {side} tower's fields: {', '.join(fields)}")
        return self.run_tower(side, self.encode(rows, labels, fields))

    def recommend(self, user: Mapping[str, Any], k: int = 10, exclude: Sequence[Any] = (),
                  labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A retrieval bundle's top ``k`` catalogue items for one user, best first: ``{"items": [keys],
        "scores": float32 [K]}`` with score = <user vector, item vector> / temperature (exact, over every
        item vector the bundle holds). ``user``: ``{field: value}`` for each user-tower field; a history is
        a list, ``[]`` for a user without one (the tower then reads only the other fields). ``exclude``:
        item keys never returned (matched as ids are: 7, 7.0 and "7" are one key; keys the catalogue
        lacks are ignored). ``K = min(k, items not excluded)``: a ``k`` above the catalogue's size returns
        all of it. ``labels``: how messages name a user field (``exclude`` is named ``exclude``)."""
        if self.catalogue_vectors is None:
            raise BundleError(f"{self.directory}: {NO_CATALOGUE}")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise RequestError(f"k: expected a whole number >= 1, got {shown(k)}")
        excluded = self.catalogue_rows(exclude, "exclude")
        vector = self.tower_vectors("user", {field: [value] for field, value in user.items()}, labels)[0]
        scores = self.catalogue_vectors @ vector / np.float32(self.retrieval["temperature"])  # [N]
        scores[excluded] = -np.inf
        rows = top_rows(scores, min(int(k), len(scores) - len(excluded)))
        return {"items": [self.catalogue_keys[row] for row in rows], "scores": scores[rows]}

    def catalogue_rows(self, keys: Sequence[Any], label: str) -> np.ndarray:
        """The distinct catalogue rows of the item ``keys`` the catalogue holds (each key a string or a
        number, or a RequestError naming ``label`` and its position)."""
        rows = set()
        for position, key in enumerate(keys):
            try:
                token = id_token(checked_key(key, label, position, "an item"), position)
            except FeatureValueError as error:
                raise request_error(label, error) from None
            if token in self._catalogue_rows:
                rows.add(self._catalogue_rows[token])
        return np.fromiter(sorted(rows), np.int64, len(rows))

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

    def item_vectors(self, field: str, values: Sequence[Any], label: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """A content field's values in a request -> (item vectors ``[B, D]``, ``Bool[B]`` present): raw
        content is encoded (each distinct item once), a list of numbers is taken as the item's vector.
        ``label`` names the field in messages (default ``field 'name'``)."""
        dim, label = self.content_fields[field]["dim"], label or f"field '{field}'"
        vectors, present = np.zeros((len(values), dim), dtype=np.float32), np.zeros(len(values), dtype=bool)
        texts: dict[int, str] = {}
        for row, value in enumerate(values):
            if value is None or (isinstance(value, float) and value != value):
                continue
            if isinstance(value, str):
                texts[row] = checked_string(value, label, row, MAX_TEXT_CHARS)
                continue
            if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != dim:
                raise RequestError(f"{label}: row {row}: expected content (a string), an item vector of "
                                   f"{dim} numbers or null, got {shown(value)}")
            vectors[row], present[row] = float32_vector(value, dim, label, row), True
        # the type's own rule, as in training: stripped, a blank text or path is no content
        raw: dict[str, list[int]] = {}
        for row, item in zip(texts, self.encode.types[field].contents(list(texts.values()))):
            if item is not None:
                raw.setdefault(item, []).append(row)
        if raw:
            encoded = self.encode_items(field, list(raw))
            for position, rows in enumerate(raw.values()):
                vectors[rows], present[rows] = encoded[position], True
        return vectors, present

    def check(self) -> None:
        """Raise AssertionError if the golden rows do not score as at export: each output within the
        ``golden_tolerance`` its manifest entry records, as ``numpy.isclose`` reads it
        (``|score - golden| <= atol + rtol * |golden|``)."""
        golden = json.loads(self.file(GOLDEN).read_text())
        inputs = dict(golden["inputs"])
        for field, preparer in self.preparers.items():  # golden image/audio files live in the bundle
            if preparer.reads_files:
                inputs[field] = [str(self.file(v)) if isinstance(v, str) else v for v in inputs[field]]
        scores = self.score(inputs)
        for task, expected in golden["outputs"].items():
            # in every manifest since format_version 2
            self._compare(f"task '{task}'", scores[task], expected, self.manifest["outputs"][task]["golden_tolerance"])
        for side, expected in golden.get("towers", {}).items():  # a retrieval bundle's towers, on the same rows
            fields = self.retrieval["towers"][side]["fields"]
            self._compare(f"the {side} tower", self.tower_vectors(side, {name: inputs[name] for name in fields}),
                          expected, self.retrieval["golden_tolerance"])

    def _compare(self, what: str, actual: Any, expected: Any, tolerance: Mapping[str, float]) -> None:
        actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
        if actual.shape != expected.shape:
            raise AssertionError(f"{self.directory}: {what} scores have shape {actual.shape}, the golden "
                                 f"outputs {expected.shape}")
        rtol, atol = tolerance["rtol"], tolerance["atol"]
        if np.isclose(actual, expected, rtol=rtol, atol=atol).all():
            return
        difference, allowed = np.abs(actual - expected), atol + rtol * np.abs(expected)
        excess = np.where(np.isnan(difference), np.inf, difference - allowed)
        worst = np.unravel_index(np.argmax(excess), excess.shape)
        place = f"row {worst[0]}" + (f", class {worst[1]}" if len(worst) > 1 else "")
        raise AssertionError(
            f"{self.directory}: {what} {place} scores {actual[worst]:.7g} against the golden "
            f"{expected[worst]:.7g}: a difference of {difference[worst]:.3g} where {allowed[worst]:.3g} is "
            f"allowed (rtol {rtol:g}, atol {atol:g})")
