"""``fusionrec export``: a checkpoint -> a bundle directory another service loads without fusionrec's
training stack (see :mod:`fusionrec.serving`).

    bundle/
      model.pt2            torch.export program: {field: tensor} -> {task: served score}, batch dynamic
      weights.safetensors  the model's parameters and buffers
      manifest.json        input signature, outputs by task and kind, the fitted preprocessing (the
                           vocabularies, with the out-of-vocabulary rule, numeric statistics),
                           components with their distributions and versions, checksums of the files
      golden.json          raw input rows and the scores the trained module gives them

The bundle is built in a temporary directory next to ``out`` and renamed into place, so a failed
export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

import fusionrec
from fusionrec.data.media import MEDIA_TYPES
from fusionrec.errors import ConfigError
from fusionrec.serving.bundle import GOLDEN, MANIFEST, ONNX_GRAPH, PROGRAM
from fusionrec.serving.features import FeatureEncoder
from fusionrec.training.module import MultiTaskModule

WEIGHTS = "weights.safetensors"
GOLDEN_ROWS = 8
OOV_RULE = ("ids are matched as strings (7, 7.0 and '7' are one id); vocabulary[i] has id i + 2; 0 is "
            "padding; unknown and missing values take id 1, the out-of-vocabulary embedding")


class ScoringGraph(nn.Module):
    """What a service runs: ``{field: [B, ...]}`` -> ``{task: served score [B] or [B, C]}``."""

    def __init__(self, module: MultiTaskModule):
        super().__init__()
        self.model = module.model

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        outputs = self.model(features)
        return {task: head.predict(outputs[task]) for task, head in self.model.heads.items()}


def golden_inputs(preprocessing: dict[str, dict[str, Any]], rows: int = GOLDEN_ROWS) -> dict[str, list]:
    """Raw values drawn from the fitted state (seeded): known ids and one unknown, numbers around the
    training mean and one missing, so the golden rows exercise every encoding path."""
    rng = np.random.default_rng(0)
    inputs: dict[str, list] = {}
    for name, entry in preprocessing.items():
        kind = entry["type"]
        if kind == "categorical":
            known = [str(rng.choice(entry["vocabulary"])) if entry["vocabulary"] else "?" for _ in range(rows - 1)]
            inputs[name] = known + ["never-seen-at-training"]
        elif kind == "multi_categorical":
            vocabulary = entry["vocabulary"] or ["?"]
            inputs[name] = [entry["separator"].join(map(str, rng.choice(vocabulary, size=2))) for _ in range(rows)]
        elif kind == "numeric":
            inputs[name] = [float(entry["mean"] + entry["std"] * rng.normal()) for _ in range(rows - 1)] + [None]
        elif kind == "vector":
            inputs[name] = rng.normal(size=(rows, entry["width"])).round(4).tolist()
    return inputs


def _signature(features: dict[str, Tensor], preprocessing: dict[str, dict]) -> list[dict[str, Any]]:
    return [{"name": name, "type": preprocessing[name]["type"], "dtype": str(value.dtype).removeprefix("torch."),
             "shape": ["batch", *value.shape[1:]]} for name, value in features.items()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_bundle(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the bundle of ``checkpoint`` to the directory ``out`` (which must not exist yet)."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out}: already exists; choose a new directory")
    module = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    preprocessing = module.hparams.preprocessing["features"]
    media = [name for name, entry in preprocessing.items() if entry["type"] in MEDIA_TYPES]
    if media:
        raise ConfigError(f"{checkpoint}: the model reads media fields ({', '.join(media)}), which export "
                          f"does not cover yet")
    graph = ScoringGraph(module).eval()
    inputs = golden_inputs(preprocessing)
    features = {name: torch.from_numpy(value) for name, value in FeatureEncoder(preprocessing)(inputs).items()}
    dynamic_shapes = {"features": {name: {0: torch.export.Dim("batch", min=1)} for name in features}}
    with torch.no_grad():
        expected = graph(features)
        program = torch.export.export(graph, (), {"features": features}, dynamic_shapes=dynamic_shapes)
    checkpoint_state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    with_onnx = all(importlib.util.find_spec(package) for package in ("onnx", "onnxscript"))

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        torch.export.save(program, staging / PROGRAM)
        if with_onnx:
            # The features dict goes in as a keyword: a trailing dict among the positional arguments
            # would be taken for the keyword arguments.
            onnx_program = torch.onnx.export(graph, (), kwargs={"features": features}, dynamic_shapes=dynamic_shapes,
                                             input_names=list(features), output_names=list(expected), dynamo=True)
            onnx_program.save(str(staging / ONNX_GRAPH))
        save_file({k: v.detach().contiguous().clone() for k, v in module.model.state_dict().items()}, staging / WEIGHTS)
        golden = {"inputs": inputs, "outputs": {task: value.tolist() for task, value in expected.items()}}
        (staging / GOLDEN).write_text(json.dumps(golden))
        manifest = {
            "format": "fusionrec-bundle", "format_version": 1,
            "fusionrec": fusionrec.__version__, "torch": str(torch.__version__),
            "inputs": _signature(features, preprocessing),
            "outputs": {task: {"kind": head.score_kind, "shape": ["batch", *expected[task].shape[1:]]}
                        for task, head in module.model.heads.items()},
            "preprocessing": preprocessing, "out_of_vocabulary": OOV_RULE,
            "components": checkpoint_state.get("fusionrec", {}).get("components", {}),
            "files": {name: {"sha256": _sha256(staging / name)}
                      for name in (PROGRAM, ONNX_GRAPH, WEIGHTS, GOLDEN) if (staging / name).exists()},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def run_export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fusionrec export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a fusionrec checkpoint")
    parser.add_argument("--out", required=True, help="the bundle directory to create")
    args = parser.parse_args(argv)
    bundle = export_bundle(args.ckpt, args.out)
    print(f"wrote {bundle}" + ("" if (bundle / ONNX_GRAPH).exists() else
                                f" (no {ONNX_GRAPH}: pip install 'fusionrec[onnx]' for it)"))
    return 0
