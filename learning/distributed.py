"""How many processes train one adapter, and what each of them does (Hugging Face Accelerate).

``multiref train`` runs unchanged under ``accelerate launch``: each process loads the data and
the model, takes a contiguous share of every effective batch, and DDP averages the gradients;
the loss is scaled by the number of processes so the update equals the single-process one
(the sum over the whole effective batch divided by its size). One process (the main one)
writes adapters, manifests and the resumable state; the others wait at barriers.

A plain run (one process) uses no Accelerator at all, so its numbers are exactly those of the
single-device loop; a launched run (``WORLD_SIZE`` > 1) or a CUDA run (bf16 autocast) gets one.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def launched_processes() -> int:
    """The process count a launcher (accelerate launch, torchrun) set; 1 for a plain run."""
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(key)
        if value and value.isdigit():
            return int(value)
    return 1


@dataclass
class Runtime:
    """The process's place in the run; ``accelerator`` is None for a plain single process."""

    accelerator: Any = None
    device: Any = None

    @property
    def processes(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.processes > 1

    @property
    def mixed_precision(self) -> str:
        return "no" if self.accelerator is None else str(self.accelerator.mixed_precision)

    def prepare(self, model: Any) -> Any:
        """DDP (and bf16 autocast on CUDA) around ``model``; the model itself when plain."""
        if self.accelerator is None:
            return model
        return self.accelerator.prepare_model(model, device_placement=False)

    def no_sync(self, model: Any, sync: bool) -> Any:
        """Skip DDP's all-reduce on the micro-batches before the last one of a step."""
        if sync or not self.distributed:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def sum(self, tensor: Any) -> Any:
        """The tensor summed over all processes (itself when plain)."""
        if not self.distributed:
            return tensor
        return self.accelerator.reduce(tensor.contiguous(), reduction="sum")

    def gather_objects(self, value: Any) -> list[Any]:
        if not self.distributed:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()

    def share(self, items: Sequence[Any]) -> list[Any]:
        """This process's contiguous share of ``items`` (an effective batch, held-out turns)."""
        per = math.ceil(len(items) / self.processes) if items else 0
        return list(items[self.rank * per : (self.rank + 1) * per])


def runtime(device: Any, dtype_name: str) -> Runtime:
    """The Runtime for this process: an Accelerator when launched on several processes, or on
    CUDA in bfloat16 (autocast); None otherwise. ``device`` is what the config resolved to; a
    launched process trains on its own (``cuda:LOCAL_RANK``, or the CPU with gloo)."""
    world = launched_processes()
    on_cuda = getattr(device, "type", str(device)) == "cuda"
    if world <= 1 and not on_cuda:
        return Runtime(None, device)
    from accelerate import Accelerator

    mixed = "bf16" if on_cuda and dtype_name == "bfloat16" else "no"
    accelerator = Accelerator(cpu=not on_cuda, mixed_precision=mixed)
    return Runtime(accelerator, accelerator.device if world > 1 else device)


__all__ = ["Runtime", "launched_processes", "runtime"]
