"""Built-in task heads: binary, regression, multiclass and multilabel."""
