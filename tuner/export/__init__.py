"""tuner.export."""
