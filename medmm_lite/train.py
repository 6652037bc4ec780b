"""``fit``: the one small training loop every lesson uses.

Every pretraining objective in the course (CLIP, MAE, captioning, diffusion, ...)
is "a model, a loss, a dataset"; only the loss changes. So the loop is written
once, here, with the details that make small runs reliable:

* **Reproducible, resumable sampling.** The batch at global step ``s`` is a pure
  function of ``(seed, s)``: epoch ``e`` shuffles with
  ``torch.randperm(n, generator=Generator().manual_seed(seed * 1_000_003 + e))``
  and drops the last incomplete batch. A run resumed from a checkpoint therefore
  sees exactly the batches the uninterrupted run would have seen.
* **AdamW without weight decay on biases, norms and embeddings** (1-D parameters,
  ``nn.Embedding`` weights, and names like ``pos_embed``/``cls_token``/``token_embedding``):
  shrinking those towards zero hurts and does not regularise.
* **Linear warmup, then cosine decay to ``min_lr_ratio * lr``** (the schedule of
  BERT, MAE and CLIP), and gradient clipping.
* **Mixed precision** (``amp``, on by default on CUDA): ``torch.autocast`` in bfloat16 where
  the device supports it (CPUs too, when asked), else float16 with a ``GradScaler``.
* **Channels-last convolutions on CUDA**: a model with real convolutions (a kernel larger
  than its stride: a ResNet, a U-Net; not a ViT's patch embedding) trains in the
  ``channels_last`` memory format, which the GPU's convolution kernels run fastest in under
  mixed precision; the model is handed back in the default format.
* **No per-step host-device sync**: losses stay on the device and are copied to
  the host once every ``log_every`` steps, so the GPU never waits for Python.
* **Atomic checkpoints and exact resume**: model, optimiser, schedule, scaler,
  history and RNG states (the global ones and the generators ``loss_fn`` draws from,
  passed as ``rng=``), written to a temporary file and moved into place
  (:mod:`medmm_lite.checkpoint`).
* **Gradient accumulation** (``grad_accum``): an update of ``batch_size`` samples made of
  ``grad_accum`` smaller forward/backward passes, for when the batch does not fit in memory.
* **Several processes** (``torchrun``, :mod:`medmm_lite.distributed`): when a process group
  is running, the model is wrapped in DistributedDataParallel and each process takes its
  contiguous slice of the same global batch (so the ``(seed, step) -> batch`` plan is the
  same as on one process); losses are averaged over processes before they are logged; only
  rank 0 draws the progress bar and writes checkpoints.

Step numbers are 1-based counts of optimiser updates: ``History.loss[i]`` is the
loss that drove update ``History.steps[i]``; an evaluation at step ``k`` sees the
model after ``k`` updates.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import numbers
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from . import distributed as dist_utils
from .checkpoint import CHECKPOINT_FORMAT, as_generators, checkpoint_exists, resume, save_checkpoint
from .utils import get_device

# Parameters whose names contain one of these get no weight decay, whatever their shape.
NO_DECAY_NAME_PARTS = ("pos_embed", "positional_embedding", "cls_token", "class_embedding",
                       "token_embedding", "mask_token")


# --------------------------------------------------------------------------- history
@dataclass
class History:
    """What ``fit`` logged: one entry per optimiser step, plus the evaluations.

    Attributes:
        steps: update numbers, 1-based.
        loss: the training loss at each of those steps.
        lr: the learning rate used at each step.
        metrics: extra values ``loss_fn`` returned, ``{name: [value per step]}``.
        evals: ``[(step, {name: value}), ...]`` from ``eval_fn``.
        seconds: wall-clock training time, summed over resumed runs.
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def final_loss(self) -> float:
        """Mean training loss over the last 10% of the logged steps (less noisy than the last one)."""
        if not self.loss:
            raise ValueError("this History is empty: nothing has been trained yet")
        tail = self.loss[-max(1, len(self.loss) // 10):]
        return float(sum(tail) / len(tail))

    def eval_curve(self, name: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one evaluated metric, for plotting or assertions."""
        points = [(s, d[name]) for s, d in self.evals if name in d]
        if not points:
            known = sorted({k for _, d in self.evals for k in d})
            raise KeyError(f"no evaluation named {name!r}; evaluated metrics: {known}")
        return [s for s, _ in points], [v for _, v in points]

    def plot(self, ax=None, smooth: int | None = None):
        """Draw the training loss (raw and smoothed) and, on a second axis, the evaluations."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        if self.loss:
            window = smooth if smooth is not None else max(1, len(self.loss) // 20)
            ax.plot(self.steps, self.loss, color="tab:blue", alpha=0.3 if window > 1 else 1.0,
                    label="train loss")
            if window > 1:
                kernel = np.ones(window) / window
                padded = np.concatenate([np.full(window - 1, self.loss[0]), self.loss])
                ax.plot(self.steps, np.convolve(padded, kernel, mode="valid"), color="tab:blue",
                        label=f"train loss ({window}-step mean)")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        handles, labels = ax.get_legend_handles_labels()
        names = sorted({k for _, d in self.evals for k in d})
        if names:
            ax2 = ax.twinx()
            for i, name in enumerate(names):
                xs, ys = self.eval_curve(name)
                ax2.plot(xs, ys, "o-", color=f"C{i + 1}", label=f"eval {name}")
            ax2.set_ylabel("evaluation")
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:
            ax.legend(handles, labels, loc="best", fontsize="small")
        return ax

    def to_dict(self) -> dict:
        """Plain lists, dicts, numbers: JSON-able and loadable with ``torch.load(weights_only=True)``."""
        return {"steps": list(self.steps), "loss": list(self.loss), "lr": list(self.lr),
                "metrics": {k: list(v) for k, v in self.metrics.items()},
                "evals": [[int(s), dict(d)] for s, d in self.evals], "seconds": float(self.seconds)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "History":
        return cls(steps=[int(s) for s in d.get("steps", [])], loss=[float(x) for x in d.get("loss", [])],
                   lr=[float(x) for x in d.get("lr", [])],
                   metrics={k: [float(x) for x in v] for k, v in d.get("metrics", {}).items()},
                   evals=[(int(s), {k: float(v) for k, v in m.items()}) for s, m in d.get("evals", [])],
                   seconds=float(d.get("seconds", 0.0)))


# --------------------------------------------------------------------------- pieces
def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """The learning-rate multiplier for (0-based) update ``step``.

    Linear warmup ``(step + 1) / warmup_steps``, so the first update already moves,
    then a half cosine from 1 down to ``min_lr_ratio``, reached by the last update.
    Same formula as ``transformers.get_cosine_with_min_lr_schedule_with_warmup_lr_rate``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps + 1) / max(1, total_steps - warmup_steps)
    progress = min(progress, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """The dataset indices of the batch at 0-based ``step``: a pure function of its arguments."""
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[position * batch_size:(position + 1) * batch_size]


class _BatchPlan:
    """``batch_indices`` with the current epoch's permutation kept, so each epoch shuffles once."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._order = None, None

    def __call__(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=generator)
        return self._order[position * self.batch_size:(position + 1) * self.batch_size].tolist()


def fetch_batch(dataset, indices: list[int], collate_fn=None):
    """Get one batch. A dataset with ``__getitems__`` is asked for the whole batch in one call
    (the fast path for in-memory cohorts); its answer is collated if it is a list of samples
    (as ``torch.utils.data.Subset`` returns) and used as it is otherwise. Other datasets are
    indexed sample by sample and collated (``default_collate`` unless ``collate_fn`` is given)."""
    if callable(getattr(dataset, "__getitems__", None)):
        items = dataset.__getitems__(indices)
        if collate_fn is not None:
            return collate_fn(items)
        if isinstance(items, list) and len(items) == len(indices):
            return default_collate(items)
        return items
    return (collate_fn or default_collate)([dataset[i] for i in indices])


def describe_non_finite(batch, indices) -> str | None:
    """Where a batch holds NaN or infinite values, e.g. "batch['image']: 1 NaN, in dataset index 5"."""
    if isinstance(batch, Mapping):
        named = [(f"batch[{k!r}]", v) for k, v in batch.items()]
    elif isinstance(batch, (list, tuple)):
        named = [(f"batch[{i}]", v) for i, v in enumerate(batch)]
    else:
        named = [("batch", batch)]
    found = []
    for name, value in named:
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        bad = ~torch.isfinite(value)
        if bad.any():
            rows = bad.reshape(len(value), -1).any(1).nonzero().flatten().tolist() if value.ndim else []
            where = ", ".join(str(int(indices[r])) for r in rows[:5]) if len(indices) == len(value) else "?"
            nans = int(torch.isnan(value).sum())
            found.append(f"{name}: {nans} NaN, {int(bad.sum()) - nans} inf, in dataset index {where}")
    return "; ".join(found) or None


def move_to_device(batch, device, channels_last: bool = False):
    """Move every tensor inside dicts, lists and tuples to ``device``; leave everything else.

    ``channels_last``: 4-D floating-point tensors (image batches) also take that memory format.
    """
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        moved = {k: move_to_device(v, device, channels_last) for k, v in batch.items()}
        try:
            return type(batch)(moved)
        except TypeError:
            return moved
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device, channels_last) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, channels_last) for v in batch)
    return batch


def has_real_convolutions(model: nn.Module) -> bool:
    """True when ``model`` has a 2-D convolution whose kernel is larger than its stride (a
    ResNet's or a U-Net's; a ViT's patch embedding, kernel = stride, is a reshaped linear layer
    and gains nothing from ``channels_last``)."""
    return any(isinstance(m, nn.Conv2d) and any(k > s for k, s in zip(m.kernel_size, m.stride))
               for m in model.modules())


def param_groups(model: nn.Module, weight_decay: float, params=None) -> list[dict]:
    """AdamW parameter groups: weight decay on weight matrices and kernels only.

    No decay on 1-D parameters (biases, norm scales), ``nn.Embedding`` weights, and
    parameters named like one of ``NO_DECAY_NAME_PARTS`` (positional embeddings, class
    and mask tokens). ``params`` restricts training to some parameters of ``model``
    (default: every parameter with ``requires_grad``).
    """
    names: dict[int, str] = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), name)
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
                     for p in m.parameters(recurse=False)}
    if params is None:
        chosen = [p for p in model.parameters() if p.requires_grad]
    else:
        chosen, seen = [], set()
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"params must be an iterable of parameters, got a {type(p).__name__}")
            if id(p) in seen:
                continue
            seen.add(id(p))
            if id(p) not in names:
                raise ValueError(f"params holds a tensor of shape {tuple(p.shape)} that is not a parameter of "
                                 "the model: fit moves and checkpoints only the model's parameters; make it an "
                                 "attribute of the model (e.g. an nn.Parameter on it)")
            if not p.requires_grad:
                raise ValueError(f"params holds {names[id(p)]!r}, which has requires_grad=False and would never "
                                 "train; set requires_grad=True on it or leave it out of params")
            chosen.append(p)
    if not chosen:
        raise ValueError("there is nothing to train: the model has no parameter with requires_grad=True "
                         "(or params is empty)")
    decay, no_decay = [], []
    for p in chosen:
        name = names[id(p)]
        if p.ndim < 2 or id(p) in embedding_ids or any(part in name for part in NO_DECAY_NAME_PARTS):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def slice_batch(batch, start: int, stop: int, size: int):
    """Rows ``start:stop`` of a collated batch of ``size`` samples: every tensor whose first
    dimension is ``size``, inside dicts, lists and tuples, and lists of ``size`` plain values
    (e.g. strings); everything else is left as it is."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.ndim and batch.shape[0] == size else batch
    if isinstance(batch, Mapping):
        cut = {k: slice_batch(v, start, stop, size) for k, v in batch.items()}
        try:
            return type(batch)(cut)
        except TypeError:
            return cut
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(slice_batch(v, start, stop, size) for v in batch))
    if isinstance(batch, (list, tuple)):
        if len(batch) == size and not any(isinstance(v, (torch.Tensor, Mapping, list, tuple)) for v in batch):
            return batch[start:stop]
        return type(batch)(slice_batch(v, start, stop, size) for v in batch)
    return batch


# --------------------------------------------------------------------------- launcher defaults
class TrainingStopped(Exception):
    """Raised by ``fit`` when ``stop_after`` updates are done: a checkpoint has been written and
    calling ``fit`` again the same way resumes from it (as after a preempted job)."""

    def __init__(self, step: int, checkpoint_path: Path):
        super().__init__(f"training stopped after step {step} as asked (stop_after); the checkpoint "
                         f"{checkpoint_path} resumes it")
        self.step, self.checkpoint_path = step, checkpoint_path


@dataclass
class _FitDefaults:
    checkpoint_dir: Path | None
    checkpoint_every: int | None
    grad_accum: int | None
    stop_after: int | None
    used: set = field(default_factory=set)

    def checkpoint_path(self, desc: str | None) -> Path:
        name = "".join(c if c.isalnum() else "-" for c in (desc or "fit").lower()).strip("-") or "fit"
        while "--" in name:
            name = name.replace("--", "-")
        if name in self.used:
            raise ValueError(f"two fit calls inside one fit_defaults block would share the checkpoint "
                             f"{self.checkpoint_dir / (name + '.pt')} (same desc {desc!r}); give them different "
                             "descs or pass checkpoint_path")
        self.used.add(name)
        return self.checkpoint_dir / f"{name}.pt"

    def fill(self, desc, checkpoint_path, checkpoint_every, grad_accum, stop_after) -> tuple:
        """``(checkpoint_path, checkpoint_every, grad_accum, stop_after)``, this block's where a fit call left None."""
        grad_accum = self.grad_accum if grad_accum is None else grad_accum
        stop_after = self.stop_after if stop_after is None else stop_after
        if checkpoint_path is None and self.checkpoint_dir is not None:
            checkpoint_path = self.checkpoint_path(desc)
            checkpoint_every = self.checkpoint_every if checkpoint_every is None else checkpoint_every
        return checkpoint_path, checkpoint_every, grad_accum, stop_after


_FIT_DEFAULTS: contextvars.ContextVar = contextvars.ContextVar("medmm_fit_defaults", default=None)


@contextlib.contextmanager
def fit_defaults(*, checkpoint_dir=None, checkpoint_every: int | None = None, grad_accum: int | None = None,
                 stop_after: int | None = None):
    """Defaults for every :func:`fit` call made inside the block that does not set them itself.

    A launcher (``python -m medmm_lite.pretrain``) runs a lesson's recipe (``pretrain_clip``...)
    unchanged inside this block: the recipe decides *what* is trained (and so the cache key),
    the launcher *how* (checkpoints, accumulation, stopping).

    Args:
        checkpoint_dir: each fit call checkpoints to (and resumes from) ``checkpoint_dir /
            "<desc>.pt"``, its progress-bar label made file-safe.
        checkpoint_every, grad_accum, stop_after: as in :func:`fit`.
    """
    settings = _FitDefaults(Path(checkpoint_dir) if checkpoint_dir is not None else None,
                            _positive_int("checkpoint_every", checkpoint_every, allow_none=True),
                            _positive_int("grad_accum", grad_accum, allow_none=True),
                            _positive_int("stop_after", stop_after, allow_none=True))
    token = _FIT_DEFAULTS.set(settings)
    try:
        yield settings
    finally:
        _FIT_DEFAULTS.reset(token)


# --------------------------------------------------------------------------- checks
def _positive_int(name: str, value, *, allow_none: bool = False, minimum: int = 1):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


@dataclass
class _Settings:
    """``fit``'s arguments once checked, with every default filled in (the launcher's, then fit's own)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    min_lr_ratio: float
    grad_clip: float | None
    seed: int
    log_every: int
    eval_every: int | None
    checkpoint_path: Path | None
    checkpoint_every: int | None
    grad_accum: int
    stop_after: int | None
    generators: list
    dataset_size: int
    device: torch.device
    amp: bool
    amp_dtype: torch.dtype
    sync_batchnorm: bool
    channels_last: bool

    def checkpoint_config(self) -> dict:
        """The settings a checkpoint must have been written under for this run to resume from it."""
        # Neither the number of processes nor grad_accum is here: both leave the batch plan and the
        # update unchanged, so a run may resume on another number of GPUs or with another accumulation.
        return {"steps": self.steps, "batch_size": self.batch_size, "lr": float(self.lr),
                "weight_decay": float(self.weight_decay), "warmup_steps": self.warmup_steps,
                "min_lr_ratio": float(self.min_lr_ratio), "grad_clip": float(self.grad_clip or 0.0),
                "seed": self.seed, "amp": bool(self.amp), "dataset_size": self.dataset_size}


MAX_STEPS_VARIABLE = "MEDMM_MAX_STEPS"


def max_steps() -> int | None:
    """The dry run's cap on every ``fit`` (tests only, ``tools/gpu_dry_run.py``): ``MEDMM_MAX_STEPS``."""
    value = os.environ.get(MAX_STEPS_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_STEPS_VARIABLE} must be a positive integer, got {value!r}")
    return int(value)


def _settings(model, loss_fn, dataset, eval_fn, *, steps, batch_size, lr, weight_decay, warmup_steps,
              min_lr_ratio, grad_clip, device, amp, seed, eval_every, checkpoint_path, checkpoint_every,
              log_every, grad_accum, rng, stop_after, sync_batchnorm, channels_last, desc) -> _Settings:
    """Check ``fit``'s arguments, all before anything moves or trains, each error naming its fix."""
    launcher = _FIT_DEFAULTS.get()
    if launcher is not None:
        checkpoint_path, checkpoint_every, grad_accum, stop_after = launcher.fill(
            desc, checkpoint_path, checkpoint_every, grad_accum, stop_after)
    cap = max_steps()  # the gpu dry run's few steps
    steps = min(_positive_int("steps", steps), cap or steps)
    batch_size = _positive_int("batch_size", batch_size)
    log_every = _positive_int("log_every", log_every)
    seed = _positive_int("seed", seed, minimum=0)
    eval_every = _positive_int("eval_every", eval_every, allow_none=True)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every, allow_none=True)
    grad_accum = _positive_int("grad_accum", 1 if grad_accum is None else grad_accum)
    stop_after = _positive_int("stop_after", stop_after, allow_none=True)
    generators = as_generators(rng)
    if not (isinstance(lr, numbers.Real) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(weight_decay, numbers.Real) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if not (isinstance(min_lr_ratio, numbers.Real) and 0 <= min_lr_ratio <= 1):
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    if warmup_steps is None:
        warmup_steps = int(round(0.05 * steps))
    warmup_steps = min(_positive_int("warmup_steps", warmup_steps, minimum=0), cap or warmup_steps)
    if warmup_steps > steps:
        raise ValueError(f"warmup_steps={warmup_steps} is longer than the run (steps={steps})")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable as eval_fn(model), got {type(eval_fn).__name__}")
    if stop_after is not None and checkpoint_path is None:
        raise ValueError("stop_after needs a checkpoint_path: without a checkpoint a stopped run cannot resume")
    try:
        n = len(dataset)
    except TypeError as err:
        raise TypeError(f"dataset must be a map-style dataset with len(), got {type(dataset).__name__}") from err
    if n < batch_size:
        raise ValueError(f"the dataset has {n} samples, fewer than batch_size={batch_size}; "
                         "lower batch_size (batches are full: the last incomplete one is dropped)")
    distributed, ranks = dist_utils.is_distributed(), dist_utils.world_size()
    if batch_size % (ranks * grad_accum):
        raise ValueError(f"batch_size={batch_size} must split evenly into {ranks} process(es) x "
                         f"grad_accum={grad_accum} pieces")

    device = get_device() if device is None else torch.device(device)
    if distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # this process's own GPU
    if amp is None:
        amp = device.type == "cuda"
    if amp and device.type not in ("cuda", "cpu"):
        warnings.warn(f"amp=True runs on CUDA and CPUs; training in float32 on {device}", stacklevel=3)
        amp = False
    # bfloat16 where the device has it (CPUs, recent GPUs); float16 with loss scaling on older GPUs
    amp_dtype = torch.float16 if device.type == "cuda" and not torch.cuda.is_bf16_supported() else torch.bfloat16
    if checkpoint_path is not None and checkpoint_every is None:
        checkpoint_every = max(1, steps // 10)
    if sync_batchnorm is None:
        sync_batchnorm = distributed and device.type == "cuda"
    if sync_batchnorm and distributed and device.type != "cuda":
        raise ValueError("sync_batchnorm needs CUDA (torch's SyncBatchNorm runs on GPUs only)")
    if channels_last is None:
        channels_last = device.type == "cuda" and has_real_convolutions(model)
    return _Settings(steps, batch_size, lr, weight_decay, warmup_steps, min_lr_ratio, grad_clip, seed, log_every,
                     eval_every, Path(checkpoint_path) if checkpoint_path is not None else None, checkpoint_every,
                     grad_accum, stop_after, generators, n, device, amp, amp_dtype, sync_batchnorm, channels_last)


def _split_loss_output(out, step: int):
    """``loss`` or ``(loss, {name: value})`` -> ``(loss, logs)``, with a clear error otherwise."""
    logs = {}
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], Mapping):
            raise TypeError("loss_fn(model, batch) must return a loss tensor or (loss, {name: value}); "
                            f"got a tuple of {len(out)} items")
        out, logs = out
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"loss_fn(model, batch) must return a scalar tensor (then backward works); got {shape} "
                        f"at step {step}. Reduce it, e.g. loss.mean()")
    if not out.requires_grad:
        raise RuntimeError("the loss does not require grad: no trainable parameter was used to compute it "
                           "(is everything frozen, or was it computed under torch.no_grad()?)")
    return out.reshape(()), logs


def _scalar_log(name: str, value):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"logged value {name!r} must be a scalar, got shape {tuple(value.shape)}")
        return value.detach().float().reshape(())
    return torch.tensor(float(value))


# --------------------------------------------------------------------------- one update
@dataclass
class _Optimiser:
    """AdamW over the trained parameters, its warmup-cosine schedule and the float16 loss scaler:
    what an update needs and a checkpoint saves."""

    trainable: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, model: nn.Module, params, cfg: _Settings) -> "_Optimiser":
        groups = param_groups(model, cfg.weight_decay, params)
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                                               min_lr_ratio=cfg.min_lr_ratio))
        # bfloat16 has float32's range, so only float16's small gradients need scaling up
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and cfg.amp_dtype == torch.float16)
        return cls([p for g in groups for p in g["params"]], optimizer, scheduler, scaler)

    def update(self, grad_clip: float | None) -> None:
        if grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.trainable, grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()


def _forward_backward(forward, batches: list, step: int, cfg: _Settings, scaler, ddp) -> tuple[torch.Tensor, dict]:
    """Gradients of one update, summed over its ``grad_accum`` pieces; returns its loss and logged values."""
    losses, logged = [], []
    for i, batch in enumerate(batches):
        batch = move_to_device(batch, cfg.device, cfg.channels_last)
        # all-reduce the gradients once, after the last piece
        sync = ddp.no_sync() if ddp is not None and i < len(batches) - 1 else contextlib.nullcontext()
        with sync:
            with torch.autocast(device_type=cfg.device.type, dtype=cfg.amp_dtype) if cfg.amp else contextlib.nullcontext():
                loss, logs = _split_loss_output(forward(batch), step)
            scaler.scale(loss / len(batches) if len(batches) > 1 else loss).backward()
        losses.append(loss.detach().float())
        logged.append({k: _scalar_log(k, v) for k, v in logs.items()})
    return _mean_of_pieces(losses, logged)


def _mean_of_pieces(losses: list[torch.Tensor], logged: list[dict]) -> tuple[torch.Tensor, dict]:
    """One step's loss and logged values: those of its only piece, or their means over the pieces."""
    if len(losses) == 1:
        return losses[0], logged[0]
    names = dict.fromkeys(name for logs in logged for name in logs)
    means = {name: torch.stack([logs[name].to(losses[0].device) for logs in logged if name in logs]).mean()
             for name in names}
    return torch.stack(losses).mean(), means


class _LocalBatches:
    """``batches(step)``: this process's share of the global batch of ``step``, in ``grad_accum`` pieces."""

    def __init__(self, dataset, collate_fn, cfg: _Settings):
        self.ranks, me = dist_utils.world_size(), dist_utils.rank()
        self.dataset, self.collate_fn, self.batch_size = dataset, collate_fn, cfg.batch_size
        self.plan = _BatchPlan(cfg.dataset_size, cfg.batch_size, cfg.seed)
        shard, micro = cfg.batch_size // self.ranks, cfg.batch_size // self.ranks // cfg.grad_accum
        self.pieces = [(me * shard + i * micro, me * shard + (i + 1) * micro) for i in range(cfg.grad_accum)]
        self.whole_batch_dataset = callable(getattr(dataset, "__getitems__", None))

    def __call__(self, step: int) -> list:
        indices = self.plan(step)
        if len(self.pieces) == 1 and self.ranks == 1:
            return [fetch_batch(self.dataset, indices, self.collate_fn)]
        if self.whole_batch_dataset:
            # A dataset that fetches whole batches may shape the batch as a whole (SameGroupBatches
            # draws it from one hospital): fetch the global batch and cut out this process's rows,
            # so every process sees the rows a single process would.
            whole = fetch_batch(self.dataset, indices, self.collate_fn)
            return [slice_batch(whole, a, b, self.batch_size) for a, b in self.pieces]
        return [fetch_batch(self.dataset, indices[a:b], self.collate_fn) for a, b in self.pieces]

    def global_batch(self, step: int) -> tuple:
        """``(batch, dataset indices)`` of the whole batch of ``step``, to look for bad samples in."""
        indices = self.plan(step)
        return fetch_batch(self.dataset, indices, self.collate_fn), indices


# --------------------------------------------------------------------------- logging
class _LossLog:
    """Step losses kept on the device until ``flush`` copies them to the history in one transfer,
    so that the GPU waits for Python once every ``log_every`` steps, not at every step."""

    def __init__(self, history: History, bar, cfg: _Settings, batches: _LocalBatches, scaler):
        self.history, self.bar, self.cfg, self.batches = history, bar, cfg, batches
        # under float16 an inf is an overflow the GradScaler handles (it skips the update, lowers its scale)
        self.inf_allowed = scaler.is_enabled()
        self.pending: list[tuple[int, float, torch.Tensor, dict]] = []

    def add(self, step: int, lr: float, loss: torch.Tensor, logs: dict) -> None:
        self.pending.append((step, lr, loss, logs))

    def flush(self) -> None:
        pending, history = self.pending, self.history
        if not pending:
            return
        scalars = [loss for _, _, loss, _ in pending] + [v for *_, logs in pending for v in logs.values()]
        values = _to_host(scalars, self.cfg.device)
        losses, extra = values[:len(pending)], iter(values[len(pending):])
        for (step, step_lr, _, logs), loss in zip(pending, losses):
            if math.isnan(loss) or (math.isinf(loss) and not self.inf_allowed):
                raise _diverged(loss, step, self.cfg.lr, *self.batches.global_batch(step))
            history.steps.append(step)
            history.loss.append(loss)
            history.lr.append(step_lr)
            step_values = {name: next(extra) for name in logs}  # same order as they were queued
            known = len(history.steps) - 1
            for name in step_values:
                history.metrics.setdefault(name, [math.nan] * known)  # a name first seen now
            for name, column in history.metrics.items():
                column.append(step_values.get(name, math.nan))
        pending.clear()
        window = history.loss[-self.cfg.log_every:]
        self.bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", lr=f"{history.lr[-1]:.2e}", refresh=False)


def _to_host(scalars: list[torch.Tensor], device: torch.device) -> list[float]:
    if dist_utils.is_distributed():  # one all-reduce: every process logs the mean over processes
        stacked = torch.stack([t.to(device) for t in scalars])
        return dist_utils.all_reduce_mean(stacked).cpu().tolist()
    on_device = [i for i, t in enumerate(scalars) if t.device.type != "cpu"]
    values = [t.item() if t.device.type == "cpu" else None for t in scalars]
    if on_device:
        copied = torch.stack([scalars[i] for i in on_device]).cpu().tolist()
        for i, v in zip(on_device, copied):
            values[i] = v
    return values


def _diverged(loss: float, step: int, lr, batch, indices) -> FloatingPointError:
    """The error for a non-finite loss: blame the data if its batch holds non-finite input."""
    bad_input = describe_non_finite(batch, indices)
    if bad_input:
        return FloatingPointError(
            f"the training loss became {loss} at step {step}: its batch holds non-finite input "
            f"({bad_input}), so the data, not the learning rate, is the problem; find such samples "
            "with torch.isfinite(x).all() and fix or drop them")
    return FloatingPointError(
        f"the training loss became {loss} at step {step}: training diverged. Lower lr "
        f"(now {lr}), keep grad_clip on, or look for a log of 0 / division by 0 in the loss")


def _evaluate(model: nn.Module, eval_fn) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad():
            result = eval_fn(model)
    finally:
        model.train()
    if not isinstance(result, Mapping):
        raise TypeError(f"eval_fn(model) must return a dict of floats, got {type(result).__name__}")
    return {str(k): float(v) for k, v in result.items()}


def _count_seconds(history: History, device: torch.device, since: float) -> float:
    """Add the time since ``since`` to ``history.seconds`` and return now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the GPU runs behind Python: wait for the work it was given
    now = time.perf_counter()
    history.seconds += now - since
    return now


# --------------------------------------------------------------------------- DDP
class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module's forward, so that DistributedDataParallel wraps the
    whole loss: whatever ``loss_fn`` calls on the model (``model(x)``, ``model.encode_text(...)``,
    ``model.logit_scale()``) runs inside DDP's forward and gets its gradients averaged."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def _wrap_in_ddp(model: nn.Module, loss_fn, trainable: list, device: torch.device):
    """DDP around ``loss_fn(model, batch)``; parameters that do not train stay out of its all-reduce."""
    from torch.nn.parallel import DistributedDataParallel

    wrapper = _LossModule(model, loss_fn)
    trained = {id(p) for p in trainable}
    frozen = [f"model.{name}" for name, p in model.named_parameters() if id(p) not in trained]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(wrapper, frozen)
    return DistributedDataParallel(wrapper, device_ids=[device.index] if device.type == "cuda" else None)


# --------------------------------------------------------------------------- fit
def fit(model: nn.Module, loss_fn, dataset, *, steps: int, batch_size: int, lr: float,
        weight_decay: float = 0.05, warmup_steps: int | None = None, min_lr_ratio: float = 0.1,
        grad_clip: float | None = 1.0, device=None, amp: bool | None = None, seed: int = 0,
        eval_fn=None, eval_every: int | None = None, checkpoint_path=None,
        checkpoint_every: int | None = None, collate_fn=None, params=None, progress: bool = True,
        desc: str | None = None, log_every: int = 10, grad_accum: int | None = None, rng=None,
        stop_after: int | None = None, sync_batchnorm: bool | None = None,
        channels_last: bool | None = None) -> History:
    """Train ``model`` in place for ``steps`` optimiser updates and return its :class:`History`.

    Args:
        model: the ``nn.Module``; it is moved to ``device``.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, {name: scalar})``; the extra
            values are logged per step in ``History.metrics``.
        dataset: any map-style dataset (``len`` and indexing). Batches are drawn by a seeded
            shuffle (see the module docstring) and moved to ``device``.
        steps, batch_size, lr: updates to make, samples per update, peak learning rate.
        weight_decay: AdamW decay on weight matrices (see :func:`param_groups`).
        warmup_steps: linear warmup length; default 5% of ``steps``.
        min_lr_ratio: the cosine ends at ``min_lr_ratio * lr``.
        grad_clip: maximum global gradient norm; ``None`` or 0 turns clipping off.
        device: default :func:`medmm_lite.get_device` (CUDA when available).
        amp: mixed precision; default on for CUDA, off on CPU (``amp=True`` there autocasts to bfloat16).
        seed: fixes the batch order (and nothing else: seed the model yourself).
        eval_fn: ``eval_fn(model) -> {name: float}``, run in eval mode without gradients every
            ``eval_every`` steps (default: only at the end) and at the end.
        checkpoint_path: write a checkpoint there every ``checkpoint_every`` steps (default: a
            tenth of the run) and at the end; if the file exists, resume from it. A finished
            checkpoint makes ``fit`` load the weights and return at once.
        collate_fn: turns a list of samples into a batch (default ``default_collate``).
        params: train only these parameters of ``model`` (default: all with ``requires_grad``).
        progress, desc: show a tqdm bar, with this label.
        log_every: copy losses to the host (one sync) every this many steps.
        grad_accum: split each update's batch into this many forward/backward passes (the
            gradients add up to the full batch's; for models whose layers see samples one at a
            time, the update is the same up to rounding). Default 1.
        rng: a ``torch.Generator`` (or a list) that ``loss_fn`` draws from (augmentations,
            masks). Its state is checkpointed, so a resumed run draws what the uninterrupted
            one would; under DDP, rank r > 0 re-seeds it with ``initial_seed() + 1_000_003 * r``
            so that processes do not all draw the same numbers.
        stop_after: stop after this many updates of this call, once the checkpoint is written,
            by raising :class:`TrainingStopped` (needs ``checkpoint_path``).
        sync_batchnorm: under DDP, normalise BatchNorm over the global batch (``SyncBatchNorm``,
            CUDA only) while training; default on for DDP on CUDA.
        channels_last: train in the ``channels_last`` memory format (model and 4-D image
            batches); default on for CUDA when the model has real convolutions (see
            :func:`has_real_convolutions`), off otherwise. The model is returned in the
            default format either way, so ``state_dict`` tensors are contiguous.

    ``grad_accum``, ``stop_after`` and ``checkpoint_path`` left at None take the values of an
    enclosing :func:`fit_defaults` block.
    """
    cfg = _settings(model, loss_fn, dataset, eval_fn, steps=steps, batch_size=batch_size, lr=lr,
                    weight_decay=weight_decay, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
                    grad_clip=grad_clip, device=device, amp=amp, seed=seed, eval_every=eval_every,
                    checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every, log_every=log_every,
                    grad_accum=grad_accum, rng=rng, stop_after=stop_after, sync_batchnorm=sync_batchnorm,
                    channels_last=channels_last, desc=desc)
    distributed, is_main, me = dist_utils.is_distributed(), dist_utils.is_main_process(), dist_utils.rank()
    if distributed and me > 0:
        for g in cfg.generators:  # different augmentations and masks on each process
            g.manual_seed(g.initial_seed() + 1_000_003 * me)

    # Set up: the model on its device, the optimiser, and the state a checkpoint left.
    model.to(cfg.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = _Optimiser.build(model, params, cfg)
    config, path = cfg.checkpoint_config(), cfg.checkpoint_path
    history, start = History(), 0
    if path is not None and checkpoint_exists(path):
        start, history = resume(path, model, opt.optimizer, opt.scheduler, opt.scaler, config, cfg.device,
                                cfg.generators)
        if start >= cfg.steps:  # a finished run: its weights are the result
            if cfg.channels_last:
                model.to(memory_format=torch.contiguous_format)
            return history
    batches = _LocalBatches(dataset, collate_fn, cfg)
    # Executed notebooks (papermill; MEDMM_PROGRESS=text) get one summary line instead of a
    # widget whose saved state would read "0%" forever.
    summary_only = progress and os.environ.get("MEDMM_PROGRESS") == "text"
    bar = tqdm(total=cfg.steps, initial=start, desc=desc or "fit",
               disable=not progress or summary_only or not is_main, dynamic_ncols=True)
    log = _LossLog(history, bar, cfg, batches, opt.scaler)
    batchnorm = (dist_utils.synchronized_batchnorm(model) if cfg.sync_batchnorm and distributed
                 else contextlib.nullcontext())

    # Train: one optimiser update per step, logging, evaluating and checkpointing on the way.
    model.train()
    started = time.perf_counter()
    try:
        with batchnorm:
            # after the BatchNorm swap, so that DDP sees the modules that will run
            ddp = _wrap_in_ddp(model, loss_fn, opt.trainable, cfg.device) if distributed else None
            forward = ddp if ddp is not None else functools.partial(loss_fn, model)
            for step in range(start, cfg.steps):
                pieces = batches(step)
                step_lr = opt.scheduler.get_last_lr()[0]
                opt.optimizer.zero_grad(set_to_none=True)
                loss, logs = _forward_backward(forward, pieces, step + 1, cfg, opt.scaler, ddp)
                opt.update(cfg.grad_clip)

                done = step + 1
                log.add(done, step_lr, loss, logs)
                last = done == cfg.steps
                stopping = cfg.stop_after is not None and done - start >= cfg.stop_after and not last
                if done % cfg.log_every == 0 or last:
                    log.flush()
                if eval_fn is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or last):
                    log.flush()
                    history.evals.append((done, _evaluate(model, eval_fn)))
                if path is not None and (done % cfg.checkpoint_every == 0 or last or stopping):
                    log.flush()
                    started = _count_seconds(history, cfg.device, started)
                    save_checkpoint(path, step=done, config=config, model=model, optimizer=opt.optimizer,
                                    scheduler=opt.scheduler, scaler=opt.scaler, history=history,
                                    device=cfg.device, generators=cfg.generators)
                bar.update(1)
                if stopping:
                    raise TrainingStopped(done, path)
        log.flush()
        _count_seconds(history, cfg.device, started)
    finally:
        bar.close()
        if cfg.channels_last:  # hand the model back as it came: state_dict tensors contiguous (safetensors needs them)
            model.to(memory_format=torch.contiguous_format)

    if summary_only and start < cfg.steps and is_main:
        first, final = history.loss[0] if history.loss else float("nan"), history.final_loss
        print(f"{desc or 'fit'}: {cfg.steps - start} steps in {history.seconds:.1f} s, "
              f"loss {first:.4f} -> {final:.4f}")
    return history


__all__ = ["fit", "fit_defaults", "TrainingStopped", "History", "warmup_cosine", "param_groups", "batch_indices",
           "fetch_batch", "slice_batch", "move_to_device", "NO_DECAY_NAME_PARTS", "CHECKPOINT_FORMAT"]
