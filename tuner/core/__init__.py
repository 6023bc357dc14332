"""tuner.core."""
