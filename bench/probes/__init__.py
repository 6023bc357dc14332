"""One-question device diagnoses, each a script: ``python3 bench/probes/NAME.py`` (suites.toml runs them)."""
