"""Python's garbage collector kept off the model's objects while a run trains.

A process that has imported torch, transformers and peft and built a model holds about 550,000 objects the
cycle collector tracks (a Llama-2-7B LoRA model on the meta device: 552,444). A full collection walks
every one of them: 0.28 s on this project's 2-core dev box. During training the objects that outlive
each step (autograd's saved-tensor hooks, logs, the Trainer's history) trigger one every 20-30 steps (a
32-layer model, 40 steps, CPU: 2 full collections), a step half again as long on a small card where a
step takes 0.46 s. ``gc.freeze()`` moves everything alive before the first step to a generation the
collector never walks, so a full collection costs what the run has made since; ``gc.unfreeze()`` at the
end hands the objects back, so that the app's next run can free this one's model.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def long_lived_objects_frozen(collect_first: bool | None = None) -> Iterator[None]:
    """Freeze what exists now (the model, the data, the libraries) for the duration of the block.

    ``collect_first``: free the garbage made while loading before it is frozen for the whole run; None
    (every training path): only where a GPU is, since there the garbage may hold device memory (a cycle
    around a tensor of the packing check). It costs one full collection, 0.3-1 s in a large process, so
    training on a CPU skips it: there the garbage holds host memory the run holds anyway, and the test
    suite's hundreds of short runs would pay it each time."""
    if collect_first is None:
        import torch

        collect_first = torch.cuda.is_available()
    if collect_first:
        gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
