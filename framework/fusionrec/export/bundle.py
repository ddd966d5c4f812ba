"""Write a bundle: a checkpoint -> the directory described in :mod:`fusionrec.export`."""

from __future__ import annotations

import fcntl
import glob
import importlib.util
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

import fusionrec
from fusionrec.components.retrieval import RetrievalModel
from fusionrec.data.media import MediaBatch
from fusionrec.data.preprocessing import feature_types
from fusionrec.errors import CommandParser, ConfigError
from fusionrec.export import golden
from fusionrec.export.evaluation import test_split_metrics
from fusionrec.export.graphs import ItemEncoderGraph, ScoringGraph, TowerGraph, write_programs
from fusionrec.export.retrieval import catalogue_vectors
from fusionrec.features.base import FeatureType, implementation
from fusionrec.serving.bundle import (ASSETS, FORMAT_VERSION, GOLDEN, ITEM_KEYS, ITEM_VECTORS, MANIFEST,
                                      NO_FUSED_SCORE, ONNX_GRAPH, PROGRAM, TOWERS, item_encoder_files, present_input,
                                      tower_files, write_checksums)
from fusionrec.serving.content import ContentPreparer, content_preparer
from fusionrec.serving.features import FeatureEncoder
from fusionrec.serving.fused_score import COMBINATIONS, FusedScore
from fusionrec.training.checkpoint import load_module

WEIGHTS = "weights.safetensors"
Catalogue = tuple[str, list[Any], np.ndarray]  # item key column, keys [N], item vectors float32 [N, D]
OOV_RULE = ("ids are matched as strings (7, 7.0 and '7' are one id); vocabulary[i] has id i + 2; 0 is "
            "padding; unknown and missing values take id 1, the out-of-vocabulary embedding")
CONTENT_RULE = ("a content field takes, per row, its raw content (a text, or an image/audio file path), "
                "its item vector from the field's item encoder (a list of numbers), or null (no content)")


def _signature(features: dict[str, Tensor], types: dict[str, FeatureType]) -> list[dict[str, Any]]:
    """The scoring graph's inputs, with the request field each comes from and what a null value of
    it means (every field must be in a request, any of its values may be null; a content field is two
    inputs: its item vector and ``<field>.present``)."""
    signature = []
    for name, value in features.items():
        field = name if name in types else name.removesuffix(".present")
        kind = types[field]
        signature.append({"name": name, "field": field, "type": kind.type_name,
                          "dtype": str(value.dtype).removeprefix("torch."), "shape": ["batch", *value.shape[1:]],
                          "null": kind.null_means})
    return signature


class BundleWriter:
    """Everything export computes from one checkpoint, written into a staging directory."""

    def __init__(self, checkpoint: str | Path, staging: Path, with_onnx: bool):
        self.checkpoint = Path(checkpoint)
        self.staging = staging
        self.with_onnx = with_onnx
        self.module = load_module(checkpoint, "--ckpt")
        self.preprocessing = self.module.hparams.preprocessing["features"]
        self.types = feature_types(self.preprocessing)
        # What a scoring service rebuilds each field's type from: its fitted state and where its class lives.
        self.manifest_preprocessing = {name: {**entry, "implementation": implementation(type(self.types[name]))}
                                       for name, entry in self.preprocessing.items()}
        self.content = {name: encoder.encoder for name, encoder in self.module.content_fields().items()}
        self.retrieval = isinstance(self.module.model, RetrievalModel)
        # Per content field, filled by write_item_encoders: the preparer a bundle rebuilds from its spec.
        self.preparers: dict[str, ContentPreparer] = {}
        self.golden_items: dict[str, list[str]] = {}  # texts, or files relative to the bundle

    def write_item_encoders(self) -> dict[str, dict[str, Any]]:
        """Per content field: its content spec and assets, and its item-encoder programs."""
        entries = {}
        for name, encoder in self.content.items():
            assets = self.staging / ASSETS / name
            try:
                spec = encoder.serving_spec(assets)
            except NotImplementedError as error:
                raise ConfigError(f"{self.checkpoint}: field '{name}': {error}") from None
            preparer = self.preparers[name] = content_preparer(spec, assets)
            self.golden_items[name] = golden.content_items(name, preparer, self.staging)
            prepared = self._prepare(name, self._located(name, self.golden_items[name]))
            dynamic = {key: {0: torch.export.Dim(f"{name}_items", min=1)} for key in prepared}
            dims = {}  # one per axis name: the inputs sharing it have equal sizes (a text's ids and mask)
            for key, axes in preparer.dynamic_axes().items():
                for axis, (axis_name, largest) in axes.items():
                    if axis_name not in dims:
                        dims[axis_name] = torch.export.Dim(f"{name}_{axis_name}", min=1, max=largest)
                    dynamic[key][axis] = dims[axis_name]
            pt2, onnx = item_encoder_files(name)
            write_programs(ItemEncoderGraph(encoder).eval(), "inputs", prepared, dynamic, ["vector"],
                           self.staging / pt2, self.staging / onnx if self.with_onnx else None)
            entries[name] = {"content": spec, "dim": encoder.output_dim, "program": pt2,
                             "onnx": onnx if self.with_onnx else None, "inputs": list(prepared)}
        return entries

    def _located(self, name: str, items: list[str]) -> list[str]:
        """Golden items as the encoders read them: files by their path in the staging directory."""
        return [str(self.staging / item) for item in items] if self.preparers[name].reads_files else items

    def _prepare(self, name: str, contents: list[str]) -> dict[str, Tensor]:
        """The item encoder's inputs for ``contents`` as the bundle prepares them."""
        prepared = self.preparers[name](contents)
        prepared.pop("problems")
        return {key: torch.from_numpy(value) for key, value in prepared.items()}

    def golden_rows(self) -> tuple[dict[str, list], dict[str, Tensor]]:
        """The golden inputs as a service sends them, and the features the module scores them from:
        content prepared by the training encoders' own ``prepare`` (so training and bundle preparation
        are compared too), the other values by their feature type's transform, training's and serving's one."""
        inputs = golden.tabular_inputs(self.types)
        features: dict[str, Tensor | MediaBatch] = {
            name: torch.from_numpy(self.types[name].transform(values)) for name, values in inputs.items()}
        for name, encoder in self.content.items():
            items, located = self.golden_items[name], self._located(name, self.golden_items[name])
            # The items plus one without content, which the rows without content point at.
            prepared = dict(encoder.prepare(located + [None]))
            prepared.pop("problems")
            codes = [len(items) if i is None else i for i in golden.CONTENT_ITEMS]
            features[name] = MediaBatch(prepared, prepared["present"], torch.tensor(codes))
            with torch.no_grad():
                vector = encoder(self._prepare(name, [located[golden.CONTENT_ITEMS[golden.VECTOR_ROW]]]))[0]
            inputs[name] = [None if i is None else items[i] for i in golden.CONTENT_ITEMS]
            inputs[name][golden.VECTOR_ROW] = vector.tolist()
        return inputs, features

    def write_towers(self, example: dict[str, Tensor], features: dict[str, Tensor], catalogue: Catalogue | None
                     ) -> tuple[dict[str, Any], dict[str, list]]:
        """A retrieval model's user and item tower programs (their ``example`` inputs: the golden rows'),
        and the ``catalogue``'s item vectors: the manifest's ``retrieval`` section and the towers' golden
        vectors (the module's on the golden ``features``)."""
        model, towers, vectors = self.module.model, {}, {}
        batch = torch.export.Dim("batch", min=1)
        for side in TOWERS:
            fields = model.user_fields if side == "user" else model.item_fields
            inputs = {name: example[name] for field in fields
                      for name in ((field, present_input(field)) if field in self.content else (field,))}
            pt2, onnx = tower_files(side)
            write_programs(TowerGraph(model, side).eval(), "features", inputs, {name: {0: batch} for name in inputs},
                           ["vector"], self.staging / pt2, self.staging / onnx if self.with_onnx else None)
            towers[side] = {"fields": list(fields), "program": pt2, "onnx": onnx if self.with_onnx else None,
                            "inputs": _signature(inputs, self.types)}
            with torch.no_grad():
                encode = model.encode_users if side == "user" else model.encode_items
                vectors[side] = encode({name: features[name] for name in fields}).tolist()
        entry = None
        if catalogue is not None:
            item_key, keys, item_vectors = catalogue
            np.save(self.staging / ITEM_VECTORS, item_vectors, allow_pickle=False)
            (self.staging / ITEM_KEYS).write_text(json.dumps(keys, allow_nan=False))
            entry = {"vectors": ITEM_VECTORS, "keys": ITEM_KEYS, "items": len(keys), "item_key": item_key}
        section = {"temperature": model.temperature, "dim": model.output_dim, "towers": towers,
                   "golden_tolerance": golden.tolerance("vector"), "catalogue": entry}
        return section, vectors

    def catalogue(self, items: str | Path, item_key: str | None) -> Catalogue:
        """``(item key column, keys, item vectors)`` of the items table ``items`` (``--items``)."""
        if not self.retrieval:
            raise ConfigError(f"--items: {self.checkpoint} has no user and item towers (it was trained without "
                              f"model.retrieval); item vectors are for retrieval bundles")
        item_key = item_key or self.module.retrieval_key("item_key")
        return (item_key, *catalogue_vectors(self.module, items, item_key))

    def write(self, fused_score: dict | None, metrics: dict[str, float] | None,
              catalogue: Catalogue | None = None) -> None:
        item_encoders = self.write_item_encoders()
        inputs, module_features = self.golden_rows()
        # Content encoded once: the module's golden outputs and the scoring graph's example read it.
        with torch.no_grad():
            content_vectors = {name: content(module_features[name])  # missing rows hold the missing vector
                               for name, content in self.module.content_fields().items()}
            content_present = {name: module_features[name].present_rows() for name in content_vectors}
            outputs = (self.module.model(module_features) if self.retrieval
                       else self.module.model(module_features, content_vectors, content_present))
        expected = {task: head.predict(outputs[task]) for task, head in self.module.model.heads.items()}

        # The scoring graph's example: the golden rows with content as item vectors.
        graph = ScoringGraph(self.module.model).eval()
        tabular = {name: entry for name, entry in self.manifest_preprocessing.items() if not self.types[name].content}
        example = {name: torch.from_numpy(v) for name, v in FeatureEncoder(tabular)({n: inputs[n] for n in tabular}).items()}
        for name, vectors in content_vectors.items():
            example[name] = vectors
            example[present_input(name)] = content_present[name]
        batch = torch.export.Dim("batch", min=1)
        write_programs(graph, "features", example, {name: {0: batch} for name in example}, list(expected),
                       self.staging / PROGRAM, self.staging / ONNX_GRAPH if self.with_onnx else None)
        # Parameters and buffers; a module's extra state (a graph encoder's training edges) is no weight.
        save_file({k: v.detach().contiguous().clone() for k, v in self.module.model.state_dict().items()
                   if isinstance(v, torch.Tensor)}, self.staging / WEIGHTS)
        golden_rows = {"inputs": inputs, "outputs": {task: value.tolist() for task, value in expected.items()}}
        retrieval = None
        if self.retrieval:
            retrieval, golden_rows["towers"] = self.write_towers(example, module_features, catalogue)
        (self.staging / GOLDEN).write_text(json.dumps(golden_rows))
        checkpoint_state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        manifest = {
            "format": "fusionrec-bundle", "format_version": FORMAT_VERSION,
            "fusionrec": fusionrec.__version__, "torch": str(torch.__version__),
            "inputs": _signature(example, self.types),
            "outputs": {task: {"kind": head.score_kind, "shape": ["batch", *expected[task].shape[1:]],
                               "golden_tolerance": golden.tolerance(head.score_kind)}
                        for task, head in self.module.model.heads.items()},
            "preprocessing": self.manifest_preprocessing, "out_of_vocabulary": OOV_RULE,
            "content": {"rule": CONTENT_RULE, "fields": item_encoders},
            "fused_score": fused_score,
            "test_metrics": metrics,
            "components": checkpoint_state.get("fusionrec", {}).get("components", {}),
        }
        if retrieval is not None:
            manifest["retrieval"] = retrieval
        # allow_nan=False: a non-finite number would make the manifest invalid JSON for other services.
        (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=1, allow_nan=False))
        write_checksums(self.staging)


def _locked(directory: Path) -> int | None:
    """A descriptor of ``directory`` holding its exclusive lock, or None while another process holds it."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        return None
    return handle


def _staging_directory(out: Path) -> tuple[Path, int]:
    """A new hidden ``.NAME.partial-xxxxxxxx`` directory next to ``out`` and the descriptor locking it while
    this process lives; the kernel drops the lock when the process dies, even by SIGKILL, so an unlocked one
    is what a killed export left behind and is removed here. Sweep and creation hold a lock on the parent
    directory, so a concurrent export never takes the other's new directory for an abandoned one."""
    parent = os.open(out.parent, os.O_RDONLY)
    try:
        fcntl.flock(parent, fcntl.LOCK_EX)
        for stale in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
            handle = _locked(stale) if stale.is_dir() else None
            if handle is not None:
                shutil.rmtree(stale, ignore_errors=True)
                os.close(handle)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        return staging, _locked(staging)
    finally:
        os.close(parent)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit meanwhile (Python's default is to die on the spot), so the staging
    directory is removed on a ``kill`` as it is on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def export_bundle(checkpoint: str | Path, out: str | Path, score: str | dict | None = None,
                  combine: str = "product", test_metrics: bool = True, onnx: bool = True,
                  items: str | Path | None = None, item_key: str | None = None) -> Path:
    """Write the bundle of ``checkpoint`` to the directory ``out`` (which must not exist yet).
    ``score``/``combine``: the fused score ``POST /recommend`` ranks by (see ``fusionrec recommend``).
    ``onnx``: also write the ONNX graphs, when the onnx extra is installed. ``items`` (a retrieval
    checkpoint): the catalogue table whose item vectors the bundle holds for ``/recommend``, keyed by
    its column ``item_key`` (default: the checkpoint's ``model.retrieval.item_key``)."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out}: already exists; choose a new directory")
    with_onnx = onnx and all(importlib.util.find_spec(package) for package in ("onnx", "onnxscript"))
    created = [path for path in out.absolute().parents if not path.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    with _terminated_as_exit():
        staging, lock = _staging_directory(out)
        try:
            writer = BundleWriter(checkpoint, staging, with_onnx)
            # Before the slow steps: a bad items table is said at once.
            catalogue = writer.catalogue(items, item_key) if items is not None else None
            if score is not None and writer.retrieval:
                raise ConfigError(f"--score: {NO_FUSED_SCORE}")
            tasks = list(writer.module.model.heads)
            fused = FusedScore.parse(score, combine, tasks).as_dict() if score is not None else None
            metrics = test_split_metrics(checkpoint, writer.module) if test_metrics else None
            writer.write(fused, metrics, catalogue)
            try:
                staging.rename(out)
            except OSError:  # another export finished first
                raise ConfigError(f"--out {out}: already exists; choose a new directory") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            for directory in created:  # deepest first; what --out's creation added, now empty again
                if any(directory.iterdir()):
                    break
                directory.rmdir()
            raise
        finally:
            os.close(lock)
    return out


def run_export(argv: list[str]) -> int:
    parser = CommandParser(prog="fusionrec export", description="Write a checkpoint's serving bundle.")
    parser.add_argument("--ckpt", required=True, help="a fusionrec checkpoint")
    parser.add_argument("--out", required=True, help="the bundle directory to create")
    parser.add_argument("--score", help="the fused score POST /recommend ranks by, YAML: {task: weight} or "
                                        "{task: {weight: W, offset: C}}")
    parser.add_argument("--combine", default="product", choices=COMBINATIONS, help="how --score combines tasks")
    parser.add_argument("--skip-test-metrics", action="store_true",
                        help="do not evaluate the checkpoint on its test split (e.g. when its data is not here)")
    parser.add_argument("--items", help="a retrieval checkpoint's catalogue (Parquet/CSV: the item key column and the "
                                        "item tower's fields, one row per item): its item vectors go into the bundle, "
                                        "for POST /recommend")
    parser.add_argument("--item-key", help="with --items: its key column (default: the checkpoint's "
                                           "model.retrieval.item_key)")
    parser.add_argument("--no-onnx", action="store_true",
                        help="write the torch.export programs only (the ONNX export takes most of the time "
                             "for a model with text or image fields)")
    args = parser.parse_args(argv)
    if args.item_key and not args.items:
        raise ConfigError("--item-key applies to --items: give both")
    bundle = export_bundle(args.ckpt, args.out, args.score, args.combine, not args.skip_test_metrics,
                           onnx=not args.no_onnx, items=args.items, item_key=args.item_key)
    missing_onnx = not (args.no_onnx or (bundle / ONNX_GRAPH).exists())
    print(f"wrote {bundle}" + (" (no ONNX graphs: pip install 'fusionrec[onnx]' for them)" if missing_onnx else ""))
    return 0
