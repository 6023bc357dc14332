"""tuner.runs."""
