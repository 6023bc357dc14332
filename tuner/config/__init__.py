"""tuner.config."""
