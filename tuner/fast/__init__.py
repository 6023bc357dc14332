"""tuner.fast: optional speed and memory mechanisms of the training path.

Contract (tests/test_layers.py checks the first rule):
- Only tuner.train imports this package. Nothing here reads os.environ or tuner.config.speed: the
  engine decides once per run (tuner.plan.decide.RunPlan) and passes each decision in as an argument.
- Each mechanism has a plain fallback and changes how a step runs, never what it computes;
  tests/fast/ compares it with that fallback on the CPU, tests/gpu/ on a GPU.
- A mechanism stays while bench/ measures it winning; one measured slower is deleted, not switched
  off (docs/performance.md keeps its numbers and the commit).
"""
