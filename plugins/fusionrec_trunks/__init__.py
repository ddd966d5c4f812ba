"""Built-in shared trunks: shared-bottom, MMoE and PLE."""
