"""loadgen/baselines."""
