"""Built-in encoders for tabular fields: ids, numbers, multi-valued ids and precomputed vectors."""
