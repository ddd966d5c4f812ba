"""Shared fixtures: a small generated log, configs written to tmp dirs, and the CLI in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

QUICKSTART = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
SMALL_LOG = {"rows": 30000, "users": 600, "items": 400, "seed": 0}

# Under pytest-xdist (the README's test command runs two workers) each worker, and every process its
# tests start, gets its share of the cores: two workers with a full thread pool each oversubscribe two
# cores and ran the suite slower than one process (474 s against 390 s here; 210 s with a thread each).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _threads = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    import torch

    torch.set_num_threads(_threads)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Generated data goes to a per-session cache, never the user's."""
    os.environ["FUSIONREC_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def one_thread():
    """Models this small train several times faster on one thread than on a contended thread pool."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(trunk: dict | None = None, **overrides) -> dict:
    """configs/quickstart.yaml on a smaller generated log without media, quiet and without
    checkpoints: trains in seconds."""
    config = yaml.safe_load(QUICKSTART.read_text())
    config["seed_everything"] = 7
    config["trainer"] = {"max_epochs": 3, "logger": False, "enable_checkpointing": False,
                         "enable_progress_bar": False, "enable_model_summary": False}
    config["data"].update(generate=SMALL_LOG, batch_size=512)
    # Tabular only: the quickstart's media and history fields have their own end-to-end tests
    # (test_content_fields, test_sequence, test_history_encoders).
    for field in ("item_title", "item_image", "item_audio", "clicked_before"):
        del config["data"]["features"][field]
    del config["model"]["encoders"]
    config["model"].update(embedding_dim=8, learning_rate=0.003,
                           trunk=trunk or {"name": "mmoe", "num_experts": 3, "expert_hidden": [64, 32]})
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return config


def retrieval_config(encoder: str = "sasrec", **task_options) -> dict:
    """A two-tower retrieval model on the small generated log: user id, segment and a clicked-items
    history (``encoder``) against item id and category; one ``click`` retrieval task (``task_options``)."""
    config = small_config()
    features = config["data"]["features"]
    config["data"]["features"] = {name: features[name] for name in ("user_id", "item_id", "user_segment",
                                                                     "item_category", "user_age")}
    config["data"]["features"]["clicked_before"] = {
        "type": "sequence", "max_length": 8, "vocabulary": "item_id",
        "history": {"user": "user_id", "time": "timestamp", "item": "item_id", "positive": {"column": "click"}}}
    del config["data"]["scenario"]
    config["trainer"]["max_epochs"] = 2
    config["model"] = {"embedding_dim": 16, "learning_rate": 0.005,
                       "encoders": {"clicked_before": {"name": encoder}},
                       "retrieval": {"user": {"fields": ["user_id", "user_segment", "user_age", "clicked_before"],
                                              "trunk": {"name": "shared_bottom", "hidden": [32]}},
                                     "item": {"fields": ["item_id", "item_category"]}, "dim": 16},
                       "tasks": {"click": {"head": "retrieval", **task_options}}}
    return config


def write_config(directory: Path, config: dict, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def save_tiny_bert(directory: Path, words: list[str]) -> Path:
    """A 2-layer, 32-wide BERT and its WordPiece tokenizer over ``words``, written with save_pretrained,
    so the real AutoModel/AutoTokenizer.from_pretrained path reads them back offline."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.models.bert.tokenization_bert import load_vocab

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab=load_vocab(str(vocab_file))).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    return directory
