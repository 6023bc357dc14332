"""tuner.models: getting a model in: loading tokenizers (with the one pad-token rule), models (dtype,
4/8-bit, attention) and LoRA; a model's shape from its config; its decoder layers; the embedded
default model. Knows nothing of data, configs or runs."""
