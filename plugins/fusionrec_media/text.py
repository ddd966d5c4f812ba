"""``text``: a Hugging Face encoder checkpoint over a text field, pooled to one vector per item."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from fusionrec.components import FieldInfo, PositiveFloat, PositiveInt
from fusionrec.errors import ConfigError
from fusionrec.serving.content import SPEC_VERSION
from fusionrec_media.base import MediaEncoder, MediaProblem
from fusionrec_media.freezing import longest_module_list

POOLINGS = ("cls", "mean")


class TextEncoder(MediaEncoder):
    """``AutoModel`` + ``AutoTokenizer`` from ``model`` (a hub id or a local directory):
    ``list[str] -> [U, dim]``.

    ``pooling``: ``mean`` (over real tokens, by the attention mask) or ``cls`` (the first token).
    ``finetune_top`` counts transformer layers: the model's longest ``nn.ModuleList``
    (BERT's ``encoder.layer``); modules after it (a final norm, the pooler) train with them.
    Encoder-only checkpoints (BERT, RoBERTa, DistilBERT, MiniLM, ...) are the intended use.
    """

    name = "text"

    def __init__(self, field: FieldInfo, dim: PositiveInt, *, model: str, max_length: PositiveInt = 64,
                 pooling: str = "mean", mode: str = "frozen", finetune_top: PositiveInt | None = None,
                 learning_rate: PositiveFloat | None = None, strict: bool = False):
        super().__init__(field, dim, mode=mode, finetune_top=finetune_top, learning_rate=learning_rate,
                         strict=strict)
        if pooling not in POOLINGS:
            raise ConfigError(f"{self.key}.pooling: expected 'cls' or 'mean', got {pooling!r}")
        # Imported here: the registry loads every plugin at start-up, and runs without text
        # fields should not pay for importing transformers.
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            backbone = AutoModel.from_pretrained(model)
        except Exception as error:  # a missing directory, an unknown hub id, no network, a bad config...
            raise ConfigError(f"{self.key}.model: cannot load Hugging Face checkpoint {model!r}: "
                              f"{type(error).__name__}: {error}") from error
        self.model = model
        self.max_length = max_length
        self.pooling = pooling
        self.attach_backbone(backbone, backbone.config.hidden_size, longest_module_list(backbone))

    def prepare(self, contents: list) -> dict[str, Any]:
        texts, present, problems = self.collect(contents, read_text)
        # A missing text is tokenised as "" ([CLS] [SEP]): a valid input whose features encode() zeroes.
        tokens = self.tokenizer([text or "" for text in texts], padding="longest", truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
                "present": present, "problems": problems}

    def extract(self, inputs: dict[str, Tensor]) -> Tensor:
        mask = inputs["attention_mask"]
        hidden = self.backbone(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    def serving_spec(self, assets: Path) -> dict:
        """The tokenizer as a ``tokenizer.json`` (the ``tokenizers`` package reads it without transformers)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise NotImplementedError(f"{self.key}: the tokenizer of {self.model!r} has no fast (tokenizers) "
                                      f"version, which an exported bundle needs")
        assets.mkdir(parents=True, exist_ok=True)
        backend.save(str(assets / "tokenizer.json"))
        return {"kind": "text", "version": SPEC_VERSION, "tokenizer": "tokenizer.json", "max_length": self.max_length,
                "pad_id": self.tokenizer.pad_token_id, "pad_token": self.tokenizer.pad_token,
                "padding_side": self.tokenizer.padding_side}

    def preprocessing(self) -> dict:
        return {"model": self.model, "max_length": self.max_length, "pooling": self.pooling,
                "tokenizer": type(self.tokenizer).__name__, "vocab_sha256": vocab_sha256(self.tokenizer)}


def vocab_sha256(tokenizer: Any) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()


def read_text(content: Any) -> str:
    if content is None or (isinstance(content, float) and content != content):  # None or NaN
        raise MediaProblem("no text")
    text = str(content)
    if not text.strip():
        raise MediaProblem("empty text")
    return text
