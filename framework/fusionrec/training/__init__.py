"""Lightning glue: the training module and its callbacks."""
