"""tuner.plan."""
