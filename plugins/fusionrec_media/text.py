"""``text``: a Hugging Face encoder checkpoint over a text field, pooled to one vector per item."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from torch import Tensor

from fusionrec.components import FieldInfo, PositiveFloat, PositiveInt
from fusionrec.errors import ConfigError
from fusionrec.serving.content import TextPreparer
from fusionrec_media.base import MediaEncoder
from fusionrec_media.freezing import longest_module_list

POOLINGS = ("cls", "mean")


class TextEncoder(MediaEncoder):
    """``AutoModel`` + ``AutoTokenizer`` from ``model`` (a hub id or a local directory):
    ``list[str] -> [U, dim]``.

    ``pooling``: ``mean`` (over real tokens, by the attention mask) or ``cls`` (the first token).
    Texts are tokenised by the tokenizer's fast (``tokenizers``) backend with its padding and
    truncation settings, the very preparation an exported bundle runs from its ``tokenizer.json``;
    a checkpoint whose tokenizer has no fast version is refused.
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
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(f"{self.key}.model: the tokenizer of {model!r} has no fast (tokenizers) version, "
                              f"which fusionrec prepares text with")
        if self.tokenizer.pad_token_id is None:
            raise ConfigError(f"{self.key}.model: the tokenizer of {model!r} has no padding token")
        self.preparer = TextPreparer(backend, max_length, self.tokenizer.pad_token_id, self.tokenizer.pad_token,
                                     self.tokenizer.padding_side, self.tokenizer.truncation_side)
        self.model = model
        self.max_length = max_length
        self.pooling = pooling
        self.attach_backbone(backbone, backbone.config.hidden_size, longest_module_list(backbone))

    def extract(self, inputs: dict[str, Tensor]) -> Tensor:
        mask = inputs["attention_mask"]
        hidden = self.backbone(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    def preprocessing(self) -> dict:
        return {"model": self.model, "max_length": self.max_length, "pooling": self.pooling,
                "tokenizer": type(self.tokenizer).__name__, "vocab_sha256": vocab_sha256(self.tokenizer)}


def vocab_sha256(tokenizer: Any) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()

