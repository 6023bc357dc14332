"""tuner.models."""
