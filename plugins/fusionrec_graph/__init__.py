"""Built-in graph encoders: LightGCN over the training split's user-item graph."""
