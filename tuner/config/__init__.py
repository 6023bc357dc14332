"""tuner.config: what a run is asked to do. TrainConfig's schema (schema.py), reading and writing YAML
(files.py), every problem at once (validate.py), presets, the speed settings (speed.py: how a run uses
the machine, never what it learns) and the DeepSpeed configs. Import the defining module; this file
re-exports nothing."""
