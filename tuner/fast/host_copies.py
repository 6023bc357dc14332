"""Checkpointed layer inputs sent to pinned host memory and fetched back beside the computation.

Why: the offloaded checkpoints of the small-card plan (tuner.fast.checkpoint_offload, and
tuner.fast.checkpoint_graphs when the plan offloads) copied each layer's input on the compute stream,
where nothing else runs while a copy does. On the emulated 8 GiB card a Llama-2-7B QLoRA step at 4096
tokens made 36 device-to-host and 38 host-to-device copies of about 0.53 ms each: 40 ms of a step whose
kernels take 0.41 s, all of it the GPU doing no arithmetic (torch.profiler,
bench/results/profiles/2026-12-04-session12-card8-tuner.txt).

How: the copies run on a copy stream of their own (one per device), so the copy engine moves the
data while the compute stream goes on.
- ``send``: the copy stream first waits for the compute stream's work so far (which made the tensor),
  then copies it into pinned host memory. The tensor itself is held until the next ``send``, which
  has the compute stream wait (on the GPU, not the host) for this copy and then lets it go: its memory
  goes back to the compute stream's pool at once and in order. (Marking it as used by the copy
  stream instead, ``record_stream``, kept it from reuse until the allocator saw the copy's event
  complete on the host, which runs ahead of the GPU: the GPU test's 8 offloaded layers kept ~3.7
  inputs on the device, not 2: docs/gpu-runs/2026-12-05-h200-session13-gpu-suite.log.)
- ``take``: a tensor still held (the last one sent, which backward takes first) is used where it is,
  with no copy back. Otherwise its copy back was usually started one layer early. Backward takes the
  layer inputs in the reverse order of their sending, so each ``take`` starts fetching the tensor sent
  just before the one taken: it travels while this layer is recomputed and runs its backward, and the
  compute stream waits for it on the GPU (an event, not the host) only where it is used. A tensor not
  fetched early is fetched when taken. At most two inputs are on the device at once, the one in use
  and the next (tuner.plan.memory.OFFLOAD_INPUTS_ON_DEVICE prices two).

The link from one sent tensor to the one sent before it is a weak reference, as is the module's link
to the latest: a forward pass whose backward never runs (an error, an evaluation with gradients on)
holds nothing once autograd lets its saved tensors go, and a taken tensor drops its link.
"""

from __future__ import annotations

import weakref

import torch

_COPY_STREAMS: dict[int, torch.cuda.Stream] = {}
_latest = None  # weakref to the Sent sent last, in any forward pass


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _COPY_STREAMS.get(index)
    if stream is None:
        stream = _COPY_STREAMS[index] = torch.cuda.Stream(device=index)
    return stream


class Sent:
    """A CUDA tensor's copy in pinned host memory (kept until this object goes: a second backward
    through a retained graph takes it again), and its copy back once one was started."""

    def __init__(self, host: torch.Tensor, device: torch.device, earlier, original, copied):
        self.host, self.device = host, device
        self.earlier = earlier  # weakref to the Sent sent before this one, or None
        self.original: torch.Tensor | None = original  # the tensor sent, until the next send
        self.copied: torch.cuda.Event = copied  # recorded on the copy stream after its copy to host
        self.fetched: torch.Tensor | None = None
        self.ready: torch.cuda.Event | None = None
        self.taken = False

    def release(self) -> None:
        """Let the sent tensor go once the compute stream has waited for its copy to host."""
        if self.original is not None:
            torch.cuda.current_stream(self.device).wait_event(self.copied)
            self.original = None


def send(tensor: torch.Tensor) -> Sent:
    """Start copying the CUDA tensor ``tensor`` to pinned host memory beside the computation."""
    global _latest
    compute = torch.cuda.current_stream(tensor.device)
    copies = _copy_stream(tensor.device)
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    copies.wait_stream(compute)
    with torch.cuda.stream(copies):
        host.copy_(tensor, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(copies)
    earlier = _latest() if _latest is not None else None
    if earlier is not None:
        earlier.release()
    link = None if earlier is None or earlier.taken else weakref.ref(earlier)
    sent = Sent(host, tensor.device, link, tensor, copied)
    _latest = weakref.ref(sent)
    return sent


def _fetch(sent: Sent) -> None:
    compute = torch.cuda.current_stream(sent.device)
    copies = _copy_stream(sent.device)
    # Allocated for the compute stream, which uses and frees it; the copy stream writes it only after
    # the compute work queued so far, which may still be using the memory the allocator just reused.
    tensor = torch.empty(sent.host.shape, dtype=sent.host.dtype, device=sent.device)
    copies.wait_stream(compute)
    with torch.cuda.stream(copies):
        tensor.copy_(sent.host, non_blocking=True)
        sent.ready = torch.cuda.Event()
        sent.ready.record(copies)
    sent.fetched = tensor


def take(sent: Sent) -> torch.Tensor:
    """``sent``'s tensor on its device again, ready for the compute stream's next work; starts fetching
    the tensor sent before it, which backward takes next. A tensor still held comes back as a detached
    alias of itself, with no copy."""
    if sent.original is not None:
        tensor, sent.original = sent.original.detach(), None
    else:
        if sent.fetched is None:
            _fetch(sent)
        tensor, sent.fetched = sent.fetched, None
        torch.cuda.current_stream(sent.device).wait_event(sent.ready)
    sent.taken = True
    earlier = sent.earlier() if sent.earlier is not None else None
    sent.earlier = None
    if earlier is not None and not earlier.taken and earlier.fetched is None:
        _fetch(earlier)
    return tensor
