"""``fusionrec export``: a checkpoint -> a bundle directory another service loads without fusionrec's
training stack (see :mod:`fusionrec.serving` and docs/export.md).

    bundle/
      model.pt2                    torch.export program: {input: tensor} -> {task: served score}, batch dynamic
      model.onnx                   the same graph through the dynamo ONNX exporter (the onnx extra)
      item_encoder.<field>.pt2     per content field (text, image, audio): prepared content of U items
      item_encoder.<field>.onnx      -> item vectors [U, D]; the scoring graph takes the vectors
      assets/<field>/              what preparing content needs beyond its settings (a tokenizer.json)
      user_tower.pt2, .onnx        a retrieval model's towers: that side's fields [B, ...] -> vectors [B, D];
      item_tower.pt2, .onnx          model.pt2 is then each row's user-item score
      item_vectors.npy             with --items (retrieval): the catalogue's item vectors [N, D] and keys
      item_keys.json
      weights.safetensors          the model's parameters and buffers
      manifest.json                input signature, outputs by task and kind (with the golden check's
                                   tolerance), the fitted preprocessing (vocabularies with the
                                   out-of-vocabulary rule, numeric statistics), content specs (versioned),
                                   the fused score, the checkpoint's test metrics, components with their
                                   distributions and versions, fusionrec and torch versions
      golden.json, golden/         raw input rows (and the files they name) with the trained module's scores
      SHA256SUMS                   sha256 of every other file, manifest.json included (``sha256sum -c``)

The bundle is built in a hidden directory next to ``out`` (``.NAME.partial-xxxxxxxx``) and renamed into
place, so a failed or interrupted export (an error, Ctrl-C, SIGTERM) leaves nothing behind; the directory a
SIGKILL leaves is removed by the next export next to it.
"""

from fusionrec.export.bundle import export_bundle, run_export

__all__ = ["export_bundle", "run_export"]
