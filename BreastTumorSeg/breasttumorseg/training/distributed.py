"""Training on several processes with ``torch.distributed``, started by torchrun.

``torchrun --nproc-per-node N -m breasttumorseg train --config cfg.json`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in each process's environment.
When ``WORLD_SIZE`` > 1, :func:`distributed_session`:

* initialises the process group: backend ``nccl`` when the process trains on CUDA (its
  GPU is ``cuda:<LOCAL_RANK mod number of GPUs>``), ``gloo`` on the CPU; the time limit
  of a collective operation is ``BREASTTUMORSEG_DIST_TIMEOUT_S`` seconds (default 7200:
  the other ranks wait at a barrier while rank 0 validates and writes);
* destroys it when training ends, also on errors.

The training loop (:func:`breasttumorseg.training.loop.train_on_phantom`) then wraps the network
in ``DistributedDataParallel`` (gradients averaged over the processes every step, so the
parameters stay identical; BatchNorm statistics are per process and taken from rank 0 at
every forward pass and at the end), samples ``batch_size`` patches per process from a
generator of its own (the effective batch is ``batch_size x WORLD_SIZE``), and lets only
rank 0 log, validate and write checkpoints, weights and cards while the others wait at a
barrier. A checkpoint holds every process's generator states; a resumed run needs the same
``WORLD_SIZE`` and restores every rank exactly.

Debugging aid: with ``BREASTTUMORSEG_RANK_DIGESTS=DIR`` in the environment every rank
writes ``DIR/rank-<rank>.json`` after training with the sha256 of its network state
(:func:`state_digest`), so that one can check that the ranks ended identical.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Mapping, Optional

from ..core.errors import InputError
from ..run.cohort import device_for_rank
from ..core import atomic

ENV_TIMEOUT = "BREASTTUMORSEG_DIST_TIMEOUT_S"
ENV_DIGESTS = "BREASTTUMORSEG_RANK_DIGESTS"
DEFAULT_TIMEOUT_S = 7200


def world_from_environment(environ: Optional[Mapping[str, str]] = None) -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's variables; ``(0, 1, 0)`` when unset."""
    environ = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        text = environ.get(name)
        if text is None or text == "":
            return default
        try:
            return int(text)
        except ValueError:
            raise InputError(f"is not an integer: {text!r}", f"environment {name}") from None

    world = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    local = number("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InputError(f"RANK {rank} / WORLD_SIZE {world} / LOCAL_RANK {local} are inconsistent",
                         "environment RANK/WORLD_SIZE")
    return rank, world, local


@dataclass
class Distributed:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: object = None      # torch.device this process trains on
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _tensor(self, values):
        import torch  # torch waits: this module imports without it (Slicer installs torch on first use)

        device = self.device if self.backend == "nccl" else "cpu"
        return torch.tensor(values, dtype=torch.float64, device=device)

    def barrier(self) -> None:
        """Wait until every process got here."""
        if self.enabled:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` is true on every process."""
        if not self.enabled:
            return bool(flag)
        import torch.distributed as dist

        value = self._tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item() > 0.5)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the processes."""
        if not self.enabled:
            return float(value)
        import torch.distributed as dist

        total = self._tensor([float(value)])
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total.item()) / self.world_size

    def gather(self, value) -> list:
        """Every process's ``value`` (picklable, our own objects only), in rank order."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def sync_buffers(self, module) -> None:
        """Give every process rank 0's buffers (BatchNorm running statistics)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def wrap(self, network):
        """``network`` in DistributedDataParallel (unchanged for one process)."""
        if not self.enabled:
            return network
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            return DistributedDataParallel(network, device_ids=[self.device.index], output_device=self.device.index)
        return DistributedDataParallel(network)


@contextmanager
def distributed_session(requested_device: str = "auto",
                        environ: Optional[Mapping[str, str]] = None) -> Iterator[Distributed]:
    """This process's :class:`Distributed` (with its torch device); with ``WORLD_SIZE`` > 1
    the process group is initialised here and destroyed on the way out, also on errors."""
    import torch

    from ..core.device import resolve_device

    environ = os.environ if environ is None else environ
    rank, world, local = world_from_environment(environ)
    if world == 1:
        yield Distributed(device=resolve_device(requested_device))
        return
    import torch.distributed as dist

    device = resolve_device(device_for_rank(requested_device, environ))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        timeout = float(environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise InputError(f"is not a number of seconds: {environ.get(ENV_TIMEOUT)!r}", f"environment {ENV_TIMEOUT}"
                         ) from None
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout))
    try:
        yield Distributed(rank, world, local, device, backend)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def state_digest(state: Mapping) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict's tensors (name order)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_rank_digest(context: Distributed, network, step: int,
                      environ: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """With ``BREASTTUMORSEG_RANK_DIGESTS=DIR``: write ``DIR/rank-<rank>.json`` (atomically)
    holding this process's rank, world size, step and :func:`state_digest` of ``network``."""
    environ = os.environ if environ is None else environ
    folder = environ.get(ENV_DIGESTS)
    if not folder:
        return None
    path = Path(folder) / f"rank-{context.rank}.json"
    atomic.write_text(path, json.dumps({"rank": context.rank, "world_size": context.world_size, "step": step,
                                        "digest": state_digest(network.state_dict())}) + "\n")
    return path


__all__ = ["Distributed", "distributed_session", "world_from_environment", "state_digest", "write_rank_digest",
           "ENV_TIMEOUT", "ENV_DIGESTS"]
