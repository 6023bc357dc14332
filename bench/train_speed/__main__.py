"""``python -m bench.train_speed``, from the repository root: see bench/README.md."""

import sys

from bench.train_speed.cli import main

sys.exit(main())
