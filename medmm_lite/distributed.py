"""The few helpers that let the course's code run on several processes (``torchrun``).

Under ``torchrun`` every process runs the same script; ``torchrun`` tells each one who it
is through environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``). :func:`init_from_env` reads them and joins the process group; afterwards
:func:`medmm_lite.train.fit` notices it (:func:`is_distributed`) and trains with
DistributedDataParallel. A plain ``python`` run never initialises anything, and every
helper here then answers as a single process would (rank 0 of 1).
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's number, 0 .. world_size - 1 (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's number on its own machine: the GPU it should use."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Rank 0: the one process that logs, draws progress bars and writes files."""
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by ``torchrun``'s environment variables.

    Does nothing (and returns False) outside ``torchrun`` or when ``WORLD_SIZE`` is 1.
    ``backend``: ``"nccl"`` for CUDA tensors, ``"gloo"`` for CPU tensors; default NCCL when
    CUDA is available, else gloo. With NCCL each process uses GPU ``LOCAL_RANK``.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if dist.is_initialized():
        return True
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is set but {missing} are not: launch with torchrun, which sets them all")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA; use backend 'gloo' to train on CPUs")
        torch.cuda.set_device(local_rank())  # so that "cuda" means this process's own GPU
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    """Leave the process group (if one was joined), so the process exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (a new tensor; the input when not distributed)."""
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


class _AllGatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward sends each process the gradient of its own rows.

    Process k's rows appear in *every* process's loss, so their gradient is the sum over
    processes of each one's gradient with respect to that slice: all-reduce the gradient of
    the gathered tensor, keep one's own slice. (``torch.distributed.nn.functional.all_gather``
    does the same with a reduce-scatter; this works on every backend.)
    """

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.contiguous()
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` concatenated along dim 0 (rank 0's rows first), with gradients
    flowing back to the process that computed each row. Every process must pass the same shape.
    Returns ``tensor`` itself when not distributed."""
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


@contextlib.contextmanager
def synchronized_batchnorm(model: nn.Module):
    """Inside the block, every BatchNorm of ``model`` is a ``SyncBatchNorm`` (statistics over the
    global batch, not one process's shard); afterwards the original modules are back.

    The swap shares parameters and buffers (``convert_sync_batchnorm`` reuses them) and the final
    state is copied back, so what training did stays in the model. Enter the block after moving
    the model to its device. ``SyncBatchNorm`` runs on CUDA only.
    """
    originals = {name: m for name, m in model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and name}
    if not originals:
        yield model
        return
    for name, module in originals.items():
        _set_submodule(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(module))
    try:
        yield model
    finally:
        for name, module in originals.items():
            synced = model.get_submodule(name)
            module.load_state_dict(synced.state_dict())  # shared tensors already; copying makes sure
            module.train(synced.training)
            _set_submodule(model, name, module)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


__all__ = ["is_distributed", "rank", "world_size", "local_rank", "is_main_process", "init_from_env", "shutdown",
           "barrier", "all_gather_objects", "all_reduce_mean", "all_gather_with_grad", "synchronized_batchnorm"]
