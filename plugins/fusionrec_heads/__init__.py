"""Built-in task heads: binary, regression, multiclass, multilabel and the conditional esmm."""
