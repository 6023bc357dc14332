"""tuner: fine-tune a large language model on one GPU (or a CPU), in one window."""

__version__ = "0.1.0"
