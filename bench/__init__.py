"""bench: tuner's GPU speed and memory benchmark (bench/README.md).

train_speed/  the harness: one row per configuration, tuner against the plain loop and Unsloth
probes/       one-question device diagnoses (attention kernels, graph capture, sync sites, mem_get_info)
suites.toml   the named device calls, run by ``python -m bench.train_speed --suite NAME``
results/      the rows each call appended; history/ the diary and the scripts as they were run
"""
