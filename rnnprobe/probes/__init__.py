"""Probes: one quantity per module, each a pure function from tensors to records."""
