"""DeepSpeed is loaded only by a run that uses it.

accelerate's ``extract_model_from_parallel`` (behind every ``Trainer`` and ``save_pretrained`` call)
imports deepspeed whenever the package is installed, only to ask ``isinstance(model, DeepSpeedEngine)``:
about 1.7 s and an "accelerator" warning on a CPU run that has nothing to do with DeepSpeed. No model can
be an engine of a module that was never imported, so the check is answered "available" only once
something (a ``--deepspeed`` run) has imported it. Installed or not, nothing else changes.
"""

from __future__ import annotations

import sys


def deepspeed_loaded() -> bool:
    return "deepspeed" in sys.modules


def load_deepspeed_only_when_used() -> None:
    """Make accelerate's unwrap check import deepspeed only once a run has; idempotent, process-wide."""
    import accelerate.utils.other as other

    other.is_deepspeed_available = deepspeed_loaded
