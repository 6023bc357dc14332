"""The garbage collector during training (tuner.train.collector): what exists at the first step is left
out of every collection during the run, garbage made before it is freed first, and all of it is handed
back at the end, even when training fails."""

from __future__ import annotations

import gc
import weakref

import pytest

from tuner.train.collector import long_lived_objects_frozen


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cycle collector frees it


def test_what_exists_at_the_start_is_not_walked_during_the_run_and_is_freed_after_it():
    garbage = Node()
    dead_before = weakref.ref(garbage)
    del garbage  # unreachable before the run: freed by the collection that precedes the freeze
    model = Node()
    kept = weakref.ref(model)
    with long_lived_objects_frozen(collect_first=True):
        assert dead_before() is None and gc.get_freeze_count() > 0
        del model  # the run ends with the model unreachable (the app's next run builds its own)
        gc.collect()
        assert kept() is not None  # frozen: no collection during the run walks it
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert kept() is None


def test_a_failing_run_unfreezes_too():
    with pytest.raises(RuntimeError, match="out of memory"), long_lived_objects_frozen():
        raise RuntimeError("CUDA out of memory")
    assert gc.get_freeze_count() == 0


def test_without_the_first_collection_garbage_waits_for_the_end_of_the_run():
    garbage = Node()
    dead = weakref.ref(garbage)
    del garbage
    with long_lived_objects_frozen(collect_first=False):  # a CPU run skips the full collection
        gc.collect()
        assert dead() is not None  # frozen with the rest
    gc.collect()
    assert dead() is None


@pytest.mark.parametrize("cuda", [True, False], ids=["cuda", "no-cuda"])
def test_by_default_the_first_collection_runs_where_a_gpu_is(monkeypatch, cuda):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    garbage = Node()
    dead = weakref.ref(garbage)
    del garbage
    with long_lived_objects_frozen():
        assert (dead() is None) is cuda
    gc.collect()
    assert dead() is None
