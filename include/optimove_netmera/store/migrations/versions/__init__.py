"""Migration scripts, one revision per file, hand-written and reviewed."""
