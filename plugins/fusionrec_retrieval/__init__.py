"""Built-in retrieval models and the retrieval task head."""
