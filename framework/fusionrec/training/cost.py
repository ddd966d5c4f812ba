"""What a model costs: parameters and memory of every embedding table and encoder, and the rest.

Memory is the bytes of parameters and buffers; training needs about four times that for trainable
parameters with Adam (weights, gradients and two moments), which the ``training MiB`` column shows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from torch import nn

from fusionrec.components import FieldEncoder
from fusionrec.models.content import ContentField

MIB = 2**20
ADAM_COPIES = 4  # weights, gradients, first and second moments


@dataclass(frozen=True)
class Cost:
    component: str
    parameters: int
    trainable: int
    bytes: int
    training_bytes: int
    is_table: bool  # an embedding table


def _nbytes(tensors: list) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _row(component: str, parameters: list[nn.Parameter], buffers: list, is_table: bool) -> Cost:
    trainable = [p for p in parameters if p.requires_grad]
    weights = _nbytes(parameters) + _nbytes(buffers)
    return Cost(component, sum(p.numel() for p in parameters), sum(p.numel() for p in trainable), weights,
                weights + (ADAM_COPIES - 1) * _nbytes(trainable), is_table)


def model_costs(model: nn.Module) -> list[Cost]:
    """One row per embedding table (an ``nn.Embedding``/``EmbeddingBag`` of an id field's encoder), per
    field encoder's other parameters (a projection; a content field's whole backbone), then each of the
    model's other parts (fusion, trunk and heads; a retrieval model's towers)."""
    # A table another field's encoder reaches (a history sharing the item id's, a graph encoder's partner)
    # is listed once, under the field whose id table it is.
    owners = {id(encoder.id_embedding()): field for field, encoder in model.encoders.items()
              if isinstance(encoder, FieldEncoder) and encoder.id_embedding() is not None}
    rows, listed = [], set()
    for field, encoder in model.encoders.items():
        # A content field's backbone (a transformer's token embeddings included) is one encoder row:
        # the tables that grow with the data, and that the budget is about, are the id fields'.
        tables = [] if isinstance(encoder, ContentField) else [
            m for m in encoder.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
        for table in tables:
            if id(table) in listed or owners.get(id(table), field) != field:
                continue
            listed.add(id(table))
            rows.append(_row(f"{field} table [{table.num_embeddings} x {table.embedding_dim}]",
                             list(table.parameters()), [], True))
        in_tables = {id(p) for table in tables for p in table.parameters()}
        rest = [p for p in encoder.parameters() if id(p) not in in_tables]
        if rest or not tables:  # an encoder without parameters (a numeric field) is listed too
            rows.append(_row(f"{field} encoder", rest, list(encoder.buffers()), False))
    for name, module in model.named_children():  # fusion, trunk and heads; a retrieval model's towers
        if name != "encoders":
            rows.append(_row(name, list(module.parameters()), list(module.buffers()), False))
    return rows


def table_memory_warning(costs: list[Cost], budget_mib: float | None) -> str | None:
    """The warning to give when the embedding tables' weights exceed ``budget_mib``, else None."""
    tables = sorted((c for c in costs if c.is_table), key=lambda c: c.bytes, reverse=True)
    total = sum(c.bytes for c in tables) / MIB
    if budget_mib is None or total <= budget_mib:
        return None
    largest = ", ".join(f"{c.component} {c.bytes / MIB:.1f} MiB" for c in tables[:3])
    return (f"the embedding tables take {total:.1f} MiB, over model.embedding_budget_mib = {budget_mib:g} "
            f"(largest: {largest}); shrink them with a smaller embedding_dim or hash_buckets on large id columns")


def print_costs(costs: list[Cost], console: Console | None = None) -> None:
    table = Table(title="model cost")
    for column in ("component", "parameters", "trainable", "MiB", "training MiB"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for cost in costs:
        table.add_row(cost.component, f"{cost.parameters:,}", f"{cost.trainable:,}", f"{cost.bytes / MIB:.3f}",
                      f"{cost.training_bytes / MIB:.3f}")
    total = sum(c.parameters for c in costs), sum(c.trainable for c in costs)
    table.add_row("total", f"{total[0]:,}", f"{total[1]:,}", f"{sum(c.bytes for c in costs) / MIB:.3f}",
                  f"{sum(c.training_bytes for c in costs) / MIB:.3f}", end_section=True)
    (console or Console(width=None if sys.stdout.isatty() else 200)).print(table)
