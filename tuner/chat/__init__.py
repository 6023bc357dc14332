"""tuner.chat."""
