"""The quickstart's ranking model (configs/quickstart.yaml, generated multimodal log) with and without
graph encoders: LightGCN user and item ids over the training clicks, plus FREEDOM's item-item graph of
the items' precomputed vectors, titles (frozen MiniLM features) and tags (multi-hot). Test metrics of the best
checkpoint, one seed.

    .venv/bin/python benchmarks/graph/quickstart.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml

from fusionrec.cli import make_cli

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"
GRAPH = {"user": "user_id", "item": "item_id", "positive": {"column": "click"}}


def with_graphs(config: dict) -> dict:
    encoders = config["model"]["encoders"]
    encoders["user_id"] = {"name": "lightgcn", "graph": dict(GRAPH), "layers": 2}
    encoders["item_id"] = {"name": "lightgcn", "graph": dict(GRAPH), "layers": 2,
                           "content": {"item_embedding": 1.0, "item_title": 1.0, "item_tags": 1.0}, "neighbours": 10}
    return config


def run(name: str, config: dict, directory: Path) -> dict[str, float]:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = make_cli(["--config", str(path), "--trainer.default_root_dir", str(directory / name),
                    "--trainer.enable_progress_bar", "false"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    [metrics] = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    return {key: float(value) for key, value in metrics.items() if key.startswith("test/")}


def main() -> None:
    sys.argv = sys.argv[:1]  # LightningCLI warns when it sees this script's arguments
    shipped = yaml.safe_load(QUICKSTART.read_text())
    with tempfile.TemporaryDirectory() as directory:
        results = {"quickstart": run("quickstart", shipped, Path(directory)),
                   "with graph encoders": run("graphs", with_graphs(yaml.safe_load(QUICKSTART.read_text())),
                                              Path(directory))}
    print(json.dumps(results, indent=2))
    keys = ["test/click/auc", "test/like/auc", "test/watch_time/rmse"]
    print("\n| model | " + " | ".join(key.removeprefix("test/") for key in keys) + " |\n|" + "---|" * (len(keys) + 1))
    for name, metrics in results.items():
        print(f"| {name} | " + " | ".join(f"{metrics.get(key, float('nan')):.4f}" for key in keys) + " |")


if __name__ == "__main__":
    main()
