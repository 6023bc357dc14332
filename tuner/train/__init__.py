"""tuner.train."""
