"""YAML-driven experiments: config schema, the reference recipe, runs, checkpoints, plots."""
