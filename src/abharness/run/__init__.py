"""Running an experiment: the plan, the call executor, per-endpoint scheduling, retries,
limits, the cost cap, scorers, and the run from start to merge."""
