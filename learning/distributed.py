"""How many processes train one adapter, and what each of them does (Hugging Face Accelerate).

``multiref train`` runs unchanged under ``accelerate launch``: each process loads the data and
the model, takes a contiguous share of every effective batch, and DDP averages the gradients;
the loss is scaled by the number of processes so the update equals the single-process one
(the sum over the whole effective batch divided by its size). One process (the main one)
writes adapters, manifests and the resumable state; the others wait at barriers.

A plain run (one process) uses no Accelerator at all, so its numbers are exactly those of the
single-device loop; a launched run (``WORLD_SIZE`` > 1) or a CUDA run (bf16 autocast) gets one.

``retrospect``, ``rescore`` and ``evaluate`` shard their work the same way
(:func:`inference_runtime`): the main process reads the database and sends the work list to the
others (:func:`main_loads_async`), each process decodes its share by index
(:meth:`Runtime.split`, Accelerate's ``split_between_processes``), the results come back in the
original order (:meth:`Runtime.gather`, ``gather_object``), and only the main process writes.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


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
    def tag(self) -> str:
        """A progress bar's note of whose share it counts, " (process K of N)"; empty when plain."""
        return f" (process {self.rank + 1} of {self.processes})" if self.distributed else ""

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

    def split(self, items: Sequence[T]) -> list[T]:
        """This process's share of a work list, by index (Accelerate's
        ``split_between_processes``: contiguous, the first ``len % N`` processes take one more;
        a process may get none). The whole list when plain."""
        if not self.distributed:
            return list(items)
        with self.accelerator.split_between_processes(list(items)) as mine:
            return list(mine)

    def gather(self, results: Sequence[T], total: int | None = None) -> list[T]:
        """Every process's ``results`` concatenated in process order, on every process
        (``gather_object``): after :meth:`split`, the order of the whole work list. ``total``:
        the length the gathered list must have (a check that every share came back)."""
        if not self.distributed:
            out = list(results)
        else:
            from accelerate.utils import gather_object

            out = list(gather_object(list(results)))
        if total is not None and len(out) != total:
            raise RuntimeError(f"gathered {len(out)} results from the processes, not {total}")
        return out

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


def inference_runtime(device: Any) -> Runtime:
    """The Runtime of a decoding command (retrospect, rescore, evaluate): an Accelerator only
    when launched on several processes (no mixed precision: the model is loaded in its dtype);
    a launched process decodes on its own device (``cuda:LOCAL_RANK``, or the CPU with gloo)."""
    if launched_processes() <= 1:
        return Runtime(None, device)
    from accelerate import Accelerator

    on_cuda = getattr(device, "type", str(device)) == "cuda"
    accelerator = Accelerator(cpu=not on_cuda, mixed_precision="no")
    return Runtime(accelerator, accelerator.device)


def _outcome(rt: Runtime, box: list[Any], failure: BaseException | None) -> Any:
    """Send the main process's (kind, value) to every process; raise its error everywhere."""
    from accelerate.utils import broadcast_object_list

    box = broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if failure is not None:
        raise failure
    if kind == "ValueError":
        raise ValueError(value)
    if kind != "ok":
        raise RuntimeError(f"the main process failed to load the data: {kind}: {value}")
    return value


def main_loads(rt: Runtime, load: Callable[[], T]) -> T:
    """The main process reads the database and sends the data to the others, so every process
    works on the very same list (and one process migrates the database). A ValueError on the
    main process is raised as a ValueError on every process (the commands' one-line errors)."""
    if not rt.distributed:
        return load()
    box: list[Any] = [None]
    failure: BaseException | None = None
    if rt.is_main:
        try:
            box = [("ok", load())]
        except Exception as error:  # the others must not wait for data that never comes
            failure, box = error, [(type(error).__name__, str(error))]
    return _outcome(rt, box, failure)


async def main_loads_async(rt: Runtime, load: Callable[[], Awaitable[T]]) -> T:
    """:func:`main_loads` for a coroutine (the database is async)."""
    if not rt.distributed:
        return await load()
    box: list[Any] = [None]
    failure: BaseException | None = None
    if rt.is_main:
        try:
            box = [("ok", await load())]
        except Exception as error:
            failure, box = error, [(type(error).__name__, str(error))]
    return _outcome(rt, box, failure)


__all__ = [
    "Runtime",
    "inference_runtime",
    "launched_processes",
    "main_loads",
    "main_loads_async",
    "runtime",
]
