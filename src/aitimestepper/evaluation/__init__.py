"""The evaluation stage: the held-out suite, the tuning of the classical baselines, the report."""
