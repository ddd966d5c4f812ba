"""Built-in shared trunks: shared-bottom, MMoE and PLE, and the scenario-aware STAR, PEPNet and
per-scenario task towers over any of them."""
