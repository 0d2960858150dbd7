"""YAML-driven experiments: config schema, the reference recipe, runs, checkpoints, plots."""

__all__: list[str] = []  # the modules are imported by name
