"""Built-in fusion layers."""
