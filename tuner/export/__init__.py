"""tuner.export: results out. The adapter folder, merging into the base (sharded), GGUF for llama.cpp
and Ollama with its Modelfile, task metrics on a test split, hub upload."""
