"""tuner.fast."""
