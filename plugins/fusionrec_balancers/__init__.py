"""Built-in loss balancers."""
