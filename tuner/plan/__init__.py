"""tuner.plan: decisions before any work. decide.py makes the RunPlan (which tuner.fast mechanism
applies, how many layers recompute, what waits in host memory, the optimizer), memory.py prices a
plan, estimate.py answers "will it fit, how long" with it, long_rows.py the longest sample a GPU fits.
The engine executes the same plan the estimate prices."""
