"""A content (media) field inside the model: its encoder runs once per distinct item of a batch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.data.media import MediaBatch


class ContentField(nn.Module):
    """``MediaBatch -> [B, dim]``: the encoder maps the batch's U distinct items to ``[U, dim]``, an
    item without usable content (no text, a missing or unreadable file) takes a learned missing
    vector, and each row reads its item's vector. With a frozen backbone the batch carries the
    cached backbone features and only the encoder's projection runs; a bundle's graphs pass the item
    vectors its item encoder computed (``{"vectors": [U, dim]}``), which only take the missing vector."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.output_dim = encoder.output_dim
        self.missing = nn.Parameter(torch.zeros(encoder.output_dim))

    def forward(self, batch: MediaBatch) -> Tensor:
        if "vectors" in batch.inputs:
            items = batch.inputs["vectors"]
        elif "features" in batch.inputs:
            items = self.encoder.projection(batch.inputs["features"])
        else:
            items = self.encoder(batch.inputs)
        items = torch.where(batch.present.unsqueeze(1), items, self.missing)
        return items.index_select(0, batch.inverse)
