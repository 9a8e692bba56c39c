"""Data-parallel training on torch.distributed: who am I, and the few collectives we need.

Under ``torchrun`` every process trains its share of the parallel streams; gradients are
averaged across processes after each backward pass, so N processes with a global batch B take
the same steps as one process with batch B. Stop decisions and validation sums are agreed on
collectively, so every process stops at the same step. Only rank 0 writes and draws.
Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) nothing here does anything.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


SINGLE = World()


def init_from_env(device_type: str) -> World:
    """The world torchrun describes in the environment, with its process group started."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    # A process killed by a fatal signal (say, an abort in a collective) prints where it was;
    # torchrun would otherwise report only the signal.
    faulthandler.enable()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return world


def average_gradients(parameters, world: World) -> None:
    """Replace every gradient by its mean over the processes, in one flat all-reduce."""
    if not world.active:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def any_true(flag: bool, world: World) -> bool:
    """Whether ``flag`` is set in any process (every process gets the same answer)."""
    if not world.active:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_all(values: list[float], world: World) -> list[float]:
    if not world.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_parameters(module: torch.nn.Module, world: World) -> None:
    """Make every process start from rank 0's weights."""
    if world.active:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def gather_rows(tensor: torch.Tensor, world: World, dim: int) -> torch.Tensor:
    """Every process's ``tensor`` concatenated along ``dim`` in rank order."""
    if not world.active:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def finish(world: World) -> None:
    """End a torchrun process whose work is done and saved, skipping the interpreter's teardown.

    At exit, torch's process-group threads sometimes abort the process ("terminate called without
    an active exception", about one run in five here), and torchrun then reports the whole job as
    failed although every checkpoint was written. Outside torchrun this does nothing.
    """
    if world.active:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
