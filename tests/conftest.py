"""Shared fixtures: a small generated log, configs written to tmp dirs, and the CLI in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

SMALL_LOG = {"rows": 30000, "users": 600, "items": 400, "seed": 0}


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Generated data goes to a per-session cache, never the user's."""
    os.environ["FUSIONREC_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


def small_config(trunk: dict | None = None, **overrides) -> dict:
    """A quickstart-shaped config on a small log: trains in a few seconds."""
    config = {
        "seed_everything": 7,
        "trainer": {"max_epochs": 3, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "data": {
            "generate": SMALL_LOG,
            "split": {"method": "time", "ratios": [0.8, 0.1, 0.1], "time_column": "timestamp"},
            "scenario": "scenario",
            "features": {
                "user_id": {"type": "categorical"}, "item_id": {"type": "categorical"},
                "user_segment": {"type": "categorical"}, "item_category": {"type": "categorical"},
                "user_interests": {"type": "multi_categorical", "max_length": 4},
                "item_tags": {"type": "multi_categorical", "max_length": 4},
                "user_age": {"type": "numeric"}, "item_price": {"type": "numeric"}, "hour": {"type": "numeric"},
                "item_embedding": {"type": "vector"},
            },
            "batch_size": 512,
        },
        "model": {
            "embedding_dim": 8,
            "trunk": trunk or {"name": "mmoe", "num_experts": 3, "expert_hidden": [64, 32]},
            "tasks": {"click": {"head": "binary"}, "like": {"head": "binary"},
                      "watch_time": {"head": "regression", "weight": 0.5}},
            "learning_rate": 0.003,
        },
    }
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return config


def write_config(directory: Path, config: dict, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
