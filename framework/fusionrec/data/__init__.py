"""Rows to batches: reading, schema, fitted preprocessing and the Lightning data module."""
