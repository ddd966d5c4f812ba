"""Which backbone parameters train, from an encoder's ``mode`` and ``finetune_top`` options.

- ``mode: frozen`` -- no backbone parameter trains (only the encoder's projection does);
- ``mode: finetune`` -- every backbone parameter trains;
- ``mode: finetune`` with ``finetune_top: N`` -- the last N blocks train, plus the modules
  registered after the last block (a final layer norm, a pooler), which only read its output.

What a "block" is depends on the backbone and is chosen by each encoder (a transformer layer, a
ResNet stage, a CNN block); the rest of the backbone stays frozen.
"""

from __future__ import annotations

from torch import nn

from fusionrec.errors import ConfigError

MODES = ("frozen", "finetune")


def validate_mode(mode: str, finetune_top: int | None, key: str) -> None:
    """Fail on a bad ``mode``/``finetune_top`` before a backbone is loaded; ``key`` is the
    encoder's config key (``model.encoders.<field>``)."""
    if mode not in MODES:
        raise ConfigError(f"{key}.mode: expected 'frozen' or 'finetune', got {mode!r}")
    if finetune_top is None:
        return
    if mode != "finetune":
        raise ConfigError(f"{key}.finetune_top: only applies with mode 'finetune', but mode is {mode!r}")
    if isinstance(finetune_top, bool) or not isinstance(finetune_top, int) or finetune_top < 1:
        raise ConfigError(f"{key}.finetune_top: expected a positive integer, got {finetune_top!r}")


def apply_mode(backbone: nn.Module, mode: str, blocks: list[nn.Module] | None, finetune_top: int | None,
               key: str) -> list[nn.Module]:
    """Set ``requires_grad`` on ``backbone``'s parameters; returns the modules that train, so that
    the encoder can keep the rest in ``eval()`` (frozen BatchNorm statistics and no dropout)."""
    validate_mode(mode, finetune_top, key)
    if mode == "frozen":
        backbone.requires_grad_(False)
        return []
    if finetune_top is None:
        backbone.requires_grad_(True)
        return [backbone]
    blocks = blocks or []
    if finetune_top > len(blocks):
        raise ConfigError(f"{key}.finetune_top: {finetune_top} is more than the {len(blocks)} blocks "
                          f"this backbone has")
    trainable = blocks[-finetune_top:] + modules_after(backbone, blocks[-1])
    backbone.requires_grad_(False)
    for module in trainable:
        module.requires_grad_(True)
    return trainable


def modules_after(backbone: nn.Module, block: nn.Module) -> list[nn.Module]:
    """The leaf modules (and modules with parameters of their own) that ``backbone`` registers after
    ``block``'s subtree: ``modules()`` walks in registration order, which for every backbone here is
    the order of the forward pass, so these are the final norm / pooler that read the last block."""
    in_block = {id(module) for module in block.modules()}
    after, seen = [], False
    for module in backbone.modules():
        if id(module) in in_block:
            seen = True
        elif seen and (not any(module.children()) or any(module.parameters(recurse=False))):
            after.append(module)
    return after


def longest_module_list(backbone: nn.Module, kinds: tuple[type, ...] = (nn.ModuleList,)) -> list[nn.Module]:
    """The blocks of a transformer: its longest ``nn.ModuleList`` (BERT's ``encoder.layer``, GPT-2's
    ``h``, wav2vec2's ``encoder.transformer.layers``); the first one on a tie, empty if none."""
    lists = [module for module in backbone.modules() if isinstance(module, kinds)]
    return list(max(lists, key=len)) if lists else []
