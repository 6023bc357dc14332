"""A logged step's loss and gradient norm read back one step later, without a device sync.

Trainer reads the loss (and the gradient norm) back with ``.item()`` at every logged step. That
waits for the step's backward and optimizer to finish on the GPU, and the GPU then idles while the
host does the step boundary's Python work (callbacks, logging, the next batch) before it launches
the next forward. A ``PendingLog`` instead starts an asynchronous copy into pinned host memory; the
values are read at the next step's logging point, by which time the GPU has long passed the copy.
Together with non-blocking batch copies (the step boundary's other syncs; both are the lean_steps
speed setting) this measured +4% at 4096 tokens on an H200; either alone changed nothing
(bench/history/benchmarks-2026-11.md, session 6).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _to_host(value):
    """An asynchronous host copy of a GPU tensor (a snapshot of a host one); other values as they are."""
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    value = value.detach()
    if not value.is_cuda:
        return value.clone()  # tr_loss is zeroed in place right after the snapshot
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    host.copy_(value, non_blocking=True)
    return host


@dataclass
class PendingLog:
    """One logged step's values on their way to host memory, with the step they belong to."""

    loss_sum: object  # the summed loss of the steps since the last log (tensor or float)
    steps: int  # optimizer steps in loss_sum
    grad_norm: object
    learning_rate: float | None
    global_step: int
    epoch: float | None
    tokens_seen: int
    _copied: object = field(default=None, repr=False)  # CUDA event after the copies

    @classmethod
    def snapshot(cls, loss_sum, steps, grad_norm, learning_rate, state) -> PendingLog:
        import torch

        pending = cls(
            loss_sum=_to_host(loss_sum),
            steps=steps,
            grad_norm=_to_host(grad_norm),
            learning_rate=learning_rate,
            global_step=state.global_step,
            epoch=state.epoch,
            tokens_seen=state.num_input_tokens_seen,
        )
        if isinstance(loss_sum, torch.Tensor) and loss_sum.is_cuda:
            pending._copied = torch.cuda.Event()
            pending._copied.record()
        return pending

    def loss_total(self) -> float:
        self._wait()
        return float(self.loss_sum)

    def logs(self) -> dict:
        """Trainer's log line for this step (the keys ``_maybe_log_save_evaluate`` writes)."""
        self._wait()
        logs = {"loss": float(self.loss_sum) / self.steps}
        if self.grad_norm is not None:
            logs["grad_norm"] = float(self.grad_norm)
        if self.learning_rate is not None:
            logs["learning_rate"] = self.learning_rate
        return logs

    def _wait(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()  # waits for this copy only: long done by the next step
            self._copied = None
