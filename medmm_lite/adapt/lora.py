"""LoRA: adapt a frozen network by learning a low-rank change to some of its linear layers.

Fine-tuning a pretrained layer ``y = W x + b`` changes all of ``W`` (out x in numbers).
LoRA (Hu et al., 2021) keeps ``W`` frozen and learns ``W + (alpha / rank) * B A`` instead,
with ``A`` (rank x in) and ``B`` (out x rank): for rank 4 on a 256 x 256 layer that is
2,048 trainable numbers instead of 65,536. ``B`` starts at zero, so the adapted network
computes exactly what the pretrained one did until training moves it; ``A`` starts
random (Kaiming-uniform with ``a = sqrt(5)``, as in ``loralib`` and ``peft``) so the
gradient of ``B`` is not zero.

After training, :func:`merge_lora` folds ``(alpha / rank) * B A`` into ``W``: the
adapted model is then an ordinary network again, exactly as fast as the original.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(x))`` around a frozen ``nn.Linear``.

    Only ``lora_A`` (rank x in) and ``lora_B`` (out x rank) train; ``base`` is frozen.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        check_rank_alpha(rank, alpha)
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The learned change to ``W``: ``(alpha / rank) * B A``, shape (out, in)."""
        return (self.lora_B.float() @ self.lora_A.float() * self.scaling).to(self.base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin matmuls (in -> rank -> out) instead of forming B A: cheaper for small ranks.
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function, with ``B A`` folded into its weight."""
        base = self.base
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(base.weight + self.delta_weight())
            if base.bias is not None:
                linear.bias.copy_(base.bias)
        return linear.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def check_rank_alpha(rank, alpha) -> None:
    """Raise a ValueError unless ``rank`` is a positive int and ``alpha`` a positive number."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive int (typically 4 to 16), got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number (often equal to rank or 2 * rank), got {alpha!r}")


def _parent(root: nn.Module, qualified_name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = qualified_name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), child


def apply_lora(module: nn.Module, rank: int, alpha: float, targets=None) -> nn.Module:
    """Wrap linear layers of ``module`` with :class:`LoRALinear` and freeze everything else.

    Args:
        module: the pretrained network (changed in place).
        rank: the rank of the update ``B A``.
        alpha: the update is scaled by ``alpha / rank``.
        targets: ``None`` wraps every ``nn.Linear``; a string or a list of strings wraps only
            those whose qualified names contain one of them (e.g. ``["qkv", "proj"]``).

    Returns:
        ``module`` (a bare ``nn.Linear`` comes back wrapped, as a new ``LoRALinear``).
        Afterwards only the ``lora_A``/``lora_B`` parameters have ``requires_grad``.

    ``nn.MultiheadAttention``'s ``out_proj`` is skipped (with a warning when it would have
    matched): that module reads ``out_proj.weight`` directly instead of calling it.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"apply_lora needs an nn.Module, got {type(module).__name__}")
    check_rank_alpha(rank, alpha)
    if targets is not None:
        targets = [targets] if isinstance(targets, str) else list(targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"targets must be None, a name fragment or a list of them, got {targets!r}")

    if isinstance(module, nn.Linear):
        if targets is not None:
            raise ValueError("apply_lora was given a bare nn.Linear and targets; targets select layers "
                             "inside a larger module. Pass targets=None to wrap this layer")
        return LoRALinear(module, rank, alpha)

    inside_lora = {id(m.base) for m in module.modules() if isinstance(m, LoRALinear)}
    mha_out = {id(m.out_proj) for m in module.modules() if isinstance(m, nn.MultiheadAttention)}
    linears = [(name, m) for name, m in module.named_modules(remove_duplicate=False)
               if isinstance(m, nn.Linear) and id(m) not in inside_lora]

    def wanted(name: str) -> bool:
        return targets is None or any(t in name for t in targets)

    chosen = [(name, m) for name, m in linears if wanted(name) and id(m) not in mha_out]
    skipped = [name for name, m in linears if wanted(name) and id(m) in mha_out]
    if skipped:
        warnings.warn(f"apply_lora skipped {skipped[:4]}: nn.MultiheadAttention uses its out_proj weight "
                      "directly, so a wrapper there would be ignored", stacklevel=2)
    if not chosen:
        available = [name for name, m in linears if id(m) not in mha_out]
        more = f" and {len(available) - 10} more" if len(available) > 10 else ""
        raise ValueError(f"apply_lora found no nn.Linear matching targets={targets!r}. "
                         + (f"Linear layers in this module: {available[:10]}{more}"
                            if available else "This module has no (unwrapped) nn.Linear layers at all."))

    module.requires_grad_(False)
    wrappers: dict[int, LoRALinear] = {}  # a layer used in two places gets one wrapper
    for name, linear in chosen:
        wrapper = wrappers.setdefault(id(linear), LoRALinear(linear, rank, alpha))
        parent, child = _parent(module, name)
        setattr(parent, child, wrapper)
    return module


def merge_lora(module: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` in ``module`` by a plain ``nn.Linear`` with ``W + (alpha/rank) B A``.

    The outputs do not change (up to rounding); the extra matmuls are gone. Returns
    ``module`` (a bare ``LoRALinear`` comes back as its merged ``nn.Linear``).
    """
    if isinstance(module, LoRALinear):
        return module.merged()
    found = [(name, m) for name, m in module.named_modules(remove_duplicate=False) if isinstance(m, LoRALinear)]
    if not found:
        raise ValueError("merge_lora found no LoRALinear layers in this module: apply_lora first")
    merged: dict[int, nn.Linear] = {}
    for name, wrapper in found:
        parent, child = _parent(module, name)
        setattr(parent, child, merged.setdefault(id(wrapper), wrapper.merged()))
    return module


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA factors of ``module`` (every ``lora_A`` and ``lora_B``)."""
    return [p for m in module.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


__all__ = ["LoRALinear", "apply_lora", "merge_lora", "lora_parameters"]
