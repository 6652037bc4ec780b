"""Denoising diffusion (DDPM, Ho et al. 2020) with classifier-free guidance and DDIM sampling.

The forward process adds Gaussian noise in ``T`` small steps,
``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)``; composed, it has a closed form

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s)

so a training example at any step is one line (:func:`q_sample`). A network
``eps_theta(x_t, t, c)`` learns to predict the noise that was added (:func:`diffusion_loss`:
plain MSE, DDPM's "simple" loss). Sampling runs the process backwards from pure noise.

* **Classifier-free guidance** (Ho & Salimans 2022): during training the condition is
  replaced by a learned *null* embedding with probability ``drop_prob`` (0.1-0.2), so the
  same network learns p(x | c) and p(x). At sampling,
  ``eps = eps_uncond + w (eps_cond - eps_uncond)``: ``w = 0`` ignores the condition,
  ``w = 1`` is the plain conditional model, ``w > 1`` pushes samples towards what makes
  them typical of ``c`` (sharper findings, less variety).
* **DDIM** (Song et al. 2021) samples in a few steps (25-50 instead of 1000): from the
  predicted noise it estimates ``x_0``, then jumps to an earlier step's noise level.
  ``eta = 0`` is deterministic (the same ``x_T`` always gives the same image); ``eta = 1``
  adds DDPM's posterior noise: with every step (``steps = T``) it *is* ancestral DDPM sampling.

Time steps are 0-based here: ``t = 0 .. T-1``, ``abar[0] = 1 - beta[0]``; "after the last
step" means ``abar = 1`` (the clean image). Images live in [-1, 1] inside the model
(:func:`to_model_range` / :func:`from_model_range` convert from/to the cohort's [0, 1]).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import text_encoder
from ..hub import data_fingerprint, load_or_train
from ..train import fit
from .unet import UNet

SCHEDULES = ("linear", "cosine")
CONDITIONS = ("findings", "report")


# --------------------------------------------------------------------------- the noise schedule
class NoiseSchedule:
    """The betas of a ``num_steps``-step forward process and everything derived from them.

    ``kind="linear"``: betas from 1e-4 to 0.02 (DDPM, scaled by 1000 / num_steps so that
    shorter schedules reach the same total noise). ``kind="cosine"`` (Nichol & Dhariwal 2021):
    ``abar_t = f(t) / f(0)`` with ``f(t) = cos^2(((t/T + s) / (1 + s)) pi / 2)``, s = 0.008,
    betas clipped at 0.999; it destroys information more evenly, which helps small images.

    Attributes (float64 tensors of length ``num_steps``): ``betas``, ``alphas``,
    ``alphas_cumprod`` (abar), ``alphas_cumprod_prev`` (abar of the step before; 1 at t=0).
    """

    def __init__(self, num_steps: int = 1000, kind: str = "cosine"):
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 2:
            raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
        if kind not in SCHEDULES:
            raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")
        self.num_steps, self.kind = int(num_steps), kind
        T = self.num_steps
        if kind == "linear":
            scale = 1000.0 / T
            betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
        else:
            s = 0.008
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    def __repr__(self) -> str:
        return f"NoiseSchedule(num_steps={self.num_steps}, kind={self.kind!r})"

    def check_t(self, t: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """``t`` as a long tensor of steps in [0, num_steps), or a clear ValueError."""
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer steps, got {t.dtype}")
        if t.ndim != 1 or (batch is not None and len(t) != batch):
            raise ValueError(f"t must have shape ({batch if batch is not None else 'B'},), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_steps):
            raise ValueError(f"t must be in [0, {self.num_steps}) (0-based steps), got values in "
                             f"[{int(t.min())}, {int(t.max())}]")
        return t.long()

    def gather(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values[t]`` shaped (B, 1, 1, 1) in ``like``'s dtype and device, to broadcast over images."""
        return values.to(like.device)[t.to(like.device)].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ``abar / (1 - abar)`` per step (falls from large to ~0)."""
        return self.alphas_cumprod / (1 - self.alphas_cumprod)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> [-1, 1], the range the diffusion model works in."""
    return images * 2.0 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] pixels, clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, H, W) at ``size`` x ``size``: unchanged when they already are, else area-averaged
    down (for an integer factor, exactly the mean of each block). Upsampling is refused."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"image_size must be a positive int, got {size!r}")
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if size > min(images.shape[-2:]):
        raise ValueError(f"image_size={size} is larger than the images {tuple(images.shape[-2:])}; "
                         "generate the cohort at that size instead of upsampling")
    return F.interpolate(images, size=(size, size), mode="area")


def _check_x(x, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a float tensor of images (B, C, H, W), got {got}")


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward noising in closed form: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
    _check_x(x0, "x0")
    if not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got "
                         f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    t = schedule.check_t(t, len(x0))
    abar = schedule.gather(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def q_step(schedule: NoiseSchedule, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One step of the forward chain: ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise``
    (``x_{-1}`` is the clean image). Composing these from t=0 gives :func:`q_sample`'s distribution."""
    _check_x(x_prev, "x_prev")
    t = schedule.check_t(t, len(x_prev))
    beta = schedule.gather(schedule.betas, t, x_prev)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def predict_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Invert :func:`q_sample` given the noise: ``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
    abar = schedule.gather(schedule.alphas_cumprod, t, x_t)
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


# --------------------------------------------------------------------------- conditioning
class FindingEmbedding(nn.Module):
    """Multi-hot finding labels (B, n_findings) -> a condition vector (B, dim): one linear layer,
    so each finding adds its own learned direction (and co-occurring findings add up)."""

    def __init__(self, n_findings: int, dim: int):
        super().__init__()
        self.n_findings, self.dim = n_findings, dim
        self.proj = nn.Linear(n_findings, dim)

    def forward(self, labels):
        if not isinstance(labels, torch.Tensor) or labels.ndim != 2 or labels.shape[1] != self.n_findings:
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"FindingEmbedding expected labels of shape (B, {self.n_findings}), got {got}")
        return self.proj(labels.float())


class ReportEmbedding(nn.Module):
    """A report's tokens -> a condition vector: the course's TextEncoder (trained jointly with the
    denoiser), its first-token output, a linear layer. The condition is ``(input_ids, attention_mask)``."""

    def __init__(self, text_encoder: nn.Module, dim: int):
        super().__init__()
        self.text_encoder, self.dim = text_encoder, dim
        self.proj = nn.Linear(text_encoder.dim, dim)

    def forward(self, cond):
        if not (isinstance(cond, (tuple, list)) and len(cond) == 2):
            raise ValueError("ReportEmbedding expected the condition (input_ids, attention_mask)")
        input_ids, attention_mask = cond
        return self.proj(self.text_encoder(input_ids, attention_mask).global_features)


def _batch_of(cond) -> int:
    return len(cond[0]) if isinstance(cond, (tuple, list)) else len(cond)


def drop_condition(cond_emb: torch.Tensor, null_emb: torch.Tensor, drop_prob: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each row of ``cond_emb`` (B, D) by ``null_emb`` (D,) with probability ``drop_prob``.

    Returns ``(embeddings, dropped)`` with ``dropped`` (B,) bool. The draw uses ``generator``
    on the CPU (so it is reproducible and checkpointable whatever the device).
    """
    if not 0.0 <= float(drop_prob) <= 1.0:
        raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob!r}")
    dropped = torch.rand(len(cond_emb), generator=generator) < drop_prob
    dropped = dropped.to(cond_emb.device)
    return torch.where(dropped[:, None], null_emb.to(cond_emb.dtype).expand_as(cond_emb), cond_emb), dropped


class ConditionalDenoiser(nn.Module):
    """``eps_theta(x_t, t, c)``: a :class:`~medmm_lite.generative.unet.UNet` that predicts the noise,
    a condition encoder, and the learned *null* condition of classifier-free guidance.

    ``forward(x_t, t, cond=None, drop_prob=0.0, generator=None)``: ``cond=None`` is the
    unconditional model (every row gets the null embedding); otherwise each row's condition is
    embedded and, with probability ``drop_prob``, replaced by the null one (training).
    """

    def __init__(self, unet: UNet, cond_encoder: nn.Module | None):
        super().__init__()
        if unet.cond_dim is None and cond_encoder is not None:
            raise ValueError("the UNet was built without cond_dim but a cond_encoder was given")
        self.unet, self.cond_encoder = unet, cond_encoder
        self.null_embedding = nn.Parameter(torch.zeros(unet.cond_dim)) if unet.cond_dim is not None else None

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    def embed_condition(self, cond, batch: int, drop_prob: float = 0.0, generator=None) -> torch.Tensor | None:
        if self.cond_encoder is None:
            if cond is not None:
                raise ValueError("this denoiser is unconditional; pass cond=None")
            return None
        if cond is None:
            return self.null_embedding.expand(batch, -1)
        if _batch_of(cond) != batch:
            raise ValueError(f"cond has {_batch_of(cond)} rows for {batch} images")
        emb = self.cond_encoder(cond)
        if drop_prob > 0:
            emb, _ = drop_condition(emb, self.null_embedding, drop_prob, generator)
        return emb

    def forward(self, x_t, t, cond=None, drop_prob: float = 0.0, generator=None):
        return self.unet(x_t, t, self.embed_condition(cond, len(x_t), drop_prob, generator))


def build_denoiser(image_size: int, *, condition: str | None = "findings", n_findings: int = 10,
                   text_encoder: nn.Module | None = None, base_channels: int = 16,
                   channel_mults: tuple[int, ...] = (1, 2, 2), attention: bool = False, dropout: float = 0.0,
                   seed: int = 0) -> ConditionalDenoiser:
    """A conditional (or, with ``condition=None``, unconditional) denoiser, initialised from ``seed``
    without touching the global random state."""
    if condition not in CONDITIONS + (None,):
        raise ValueError(f"condition must be one of {CONDITIONS} or None, got {condition!r}")
    if condition == "report" and text_encoder is None:
        raise ValueError("condition='report' needs a text_encoder (medmm_lite.backbones.text_encoder(P, vocab))")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cond_dim = 4 * base_channels if condition else None
        unet = UNet(image_size, 1, 1, base_channels, channel_mults, time_embedding=True, cond_dim=cond_dim,
                    attention=attention, dropout=dropout)
        encoder = (FindingEmbedding(n_findings, cond_dim) if condition == "findings"
                   else ReportEmbedding(text_encoder, cond_dim) if condition == "report" else None)
        return ConditionalDenoiser(unet, encoder)


# --------------------------------------------------------------------------- the loss
def diffusion_loss(model: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, cond=None, *,
                   drop_prob: float = 0.1, generator: torch.Generator | None = None, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM's simple loss: draw ``t ~ U{0..T-1}`` and ``eps ~ N(0, I)``, noise ``x0`` to ``x_t`` and
    return ``mean ||eps - eps_theta(x_t, t, c)||^2``. ``x0`` in [-1, 1]. ``t`` and ``noise`` may be
    given (tests); otherwise drawn from ``generator`` on the CPU and moved to ``x0``'s device."""
    _check_x(x0, "x0")
    B = len(x0)
    if t is None:
        t = torch.randint(0, schedule.num_steps, (B,), generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    t, noise = schedule.check_t(t, B).to(x0.device), noise.to(x0.device)
    x_t = q_sample(schedule, x0, t, noise)
    if isinstance(model, ConditionalDenoiser):
        eps = model(x_t, t, cond, drop_prob=drop_prob, generator=generator)
    else:
        eps = model(x_t, t) if cond is None else model(x_t, t, cond)
    return F.mse_loss(eps.float(), noise.float())


# --------------------------------------------------------------------------- sampling
def check_guidance(guidance) -> float:
    """The guidance scale as a float, or a ValueError: it must be a finite number >= 0."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.floating)) \
            or not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance scale must be a finite number >= 0 (0: unconditional, 1: conditional, "
                         f">1: stronger), got {guidance!r}")
    return float(guidance)


def guided_eps(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond=None, guidance: float = 1.0):
    """Classifier-free guidance: ``eps_uncond + w (eps_cond - eps_uncond)``.

    ``w = guidance``: 0 is the unconditional model, 1 the conditional one, larger values
    exaggerate the condition. Both predictions come from one forward pass over a doubled batch.
    With ``cond=None`` (or ``w = 0``) only the unconditional prediction is computed; with ``w = 1``
    only the conditional one.
    """
    check_guidance(guidance)
    if cond is None or guidance == 0:
        return model(x_t, t, None)
    if guidance == 1:
        return model(x_t, t, cond)
    B = len(x_t)
    if isinstance(model, ConditionalDenoiser):
        # one pass over 2B rows: the first B conditional, the last B with the null embedding
        cond_emb = model.embed_condition(cond, B)
        emb = torch.cat([cond_emb, model.null_embedding.expand(B, -1).to(cond_emb.dtype)])
        eps = model.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), emb)
        eps_cond, eps_uncond = eps[:B], eps[B:]
    else:
        eps_cond, eps_uncond = model(x_t, t, cond), model(x_t, t, None)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def sampling_timesteps(num_steps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced steps from ``num_steps - 1`` down to 0 (DDIM's sub-sequence)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be an int in [1, {num_steps}] (the schedule's length), got {steps!r}")
    ts = np.linspace(num_steps - 1, 0, int(steps)).round().astype(np.int64)
    return [int(v) for v in ts]


@torch.no_grad()
def ddim_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_prev: int | None, eps: torch.Tensor, *,
              eta: float = 0.0, clip_denoised: bool = True, generator: torch.Generator | None = None):
    """One DDIM update from step ``t`` to ``t_prev`` (None: to the clean image, abar = 1).

        x0_hat  = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)                 (clamped to [-1, 1])
        sigma   = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
        x_prev  = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z

    Returns ``(x_prev, x0_hat)``.
    """
    abar_t = float(schedule.alphas_cumprod[t])
    abar_prev = 1.0 if t_prev is None else float(schedule.alphas_cumprod[t_prev])
    x0 = (x_t - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)
    if clip_denoised:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x_t - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)   # the noise consistent with the clamped x0
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)) if eta > 0 else 0.0
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(0.0, 1 - abar_prev - sigma ** 2)) * eps
    if sigma > 0:
        x_prev = x_prev + sigma * torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
    return x_prev, x0


@torch.no_grad()
def sample(model: nn.Module, schedule: NoiseSchedule, shape: tuple[int, ...] | None = None, cond=None, *,
           steps: int = 25, guidance: float = 1.0, eta: float = 0.0, x_T: torch.Tensor | None = None,
           clip_denoised: bool = True, generator: torch.Generator | None = None, device=None,
           return_trajectory: bool = False):
    """Generate images by running the reverse process from noise: DDIM (``eta=0``, deterministic)
    or, with ``eta=1``, DDPM's ancestral sampler (exactly DDPM's when ``steps = schedule.num_steps``).

    Args:
        model: ``model(x_t, t, cond)`` -> predicted noise (a :class:`ConditionalDenoiser`).
        schedule: the training schedule.
        shape: (B, C, H, W) of the images; or give ``x_T`` (the starting noise) instead.
        cond: the condition for every image (e.g. finding labels (B, n_findings)); None: unconditional.
        steps: number of denoising steps (25-50 is plenty with DDIM).
        guidance: classifier-free guidance scale ``w`` (see :func:`guided_eps`).
        eta: 0 deterministic DDIM, 1 ancestral DDPM noise, in between interpolates.
        clip_denoised: clamp each step's estimate of x0 to [-1, 1].
        generator: CPU generator for x_T and the per-step noise.
        return_trajectory: also return the list of x0 estimates, one per step (for figures).

    Returns images in [-1, 1] (use :func:`from_model_range` for [0, 1]), model left in its mode.
    """
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0: DDIM, 1: DDPM), got {eta!r}")
    if x_T is None:
        if shape is None:
            raise ValueError("give the images' shape (B, C, H, W) or the starting noise x_T")
        x_T = torch.randn(tuple(shape), generator=generator)
    _check_x(x_T, "x_T")
    if device is None:
        first = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        device = first.device if first is not None else x_T.device
    size = getattr(model, "image_size", None)
    if size is not None and tuple(x_T.shape[-2:]) != (size, size):
        raise ValueError(f"the model generates {size}x{size} images, got shape {tuple(x_T.shape)}")
    if cond is not None and _batch_of(cond) != len(x_T):
        raise ValueError(f"cond has {_batch_of(cond)} rows for {len(x_T)} images")
    check_guidance(guidance)
    x = x_T.to(device)
    if cond is not None:
        cond = tuple(c.to(device) for c in cond) if isinstance(cond, (tuple, list)) else cond.to(device)
    ts = sampling_timesteps(schedule.num_steps, steps)
    trajectory = []
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else None
            t_batch = torch.full((len(x),), t, dtype=torch.long, device=device)
            eps = guided_eps(model, x, t_batch, cond, guidance)
            x, x0 = ddim_step(schedule, x, t, t_prev, eps.to(x.dtype), eta=eta, clip_denoised=clip_denoised,
                              generator=generator)
            if return_trajectory:
                trajectory.append(x0.cpu())
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    return (x, trajectory) if return_trajectory else x


# --------------------------------------------------------------------------- conditions from text
def findings_from_reports(reports, findings=None) -> torch.Tensor:
    """Multi-hot finding vectors (N, len(FINDINGS)) from report texts through the course's labeler:
    a finding is 1 when the report states it (negated and uncertain mentions count as 0), and
    "No Finding" is 1 when no other finding is. Turns a written prompt into the condition a
    findings-conditioned model takes: ``sample(..., cond=findings_from_reports(["Large left pleural effusion."]))``.
    """
    from ..data import FINDINGS
    from ..eval import label_report

    names = tuple(findings or FINDINGS)
    if isinstance(reports, str):
        reports = [reports]
    out = torch.zeros(len(reports), len(names))
    for i, text in enumerate(reports):
        labels = label_report(text)
        for j, name in enumerate(names):
            out[i, j] = float(labels.get(name) == 1)
        if "No Finding" in names:
            k = names.index("No Finding")
            others = [j for j in range(len(names)) if j != k]
            out[i, k] = float(out[i, others].sum() == 0)
    return out


# --------------------------------------------------------------------------- cached training
def train_ddpm(P, data, *, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
               lr: float | None = None, condition: str | None = "findings", num_steps: int = 1000,
               schedule: str = "cosine", drop_prob: float = 0.1, base_channels: int | None = None,
               channel_mults: tuple[int, ...] = (1, 2, 2), attention: bool = False, image_size: int | None = None,
               dataset: str = "synthcxr", device=None, progress: bool = True, retrain: bool = False):
    """Train (or load from the cache) a conditional DDPM on the training images of ``data``.

    ``data`` is a :class:`~medmm_lite.data.PreparedData`. ``image_size`` (default: the cohort's)
    may be smaller than the cohort's images, which are then area-downsampled (a 32 px model
    costs about a quarter of a 64 px one: the way to fit a CPU budget).
    ``condition="findings"``: the cohort's multi-hot labels; ``"report"``: the report tokens
    through a TextEncoder trained jointly; None: unconditional. ``drop_prob`` is the
    classifier-free guidance condition dropout. ``base_channels`` (the U-Net's width at full
    resolution) defaults to 16 on the CPU (a 32 px step of batch 64 then takes ~0.25 s on one
    core) and ``P.dim // 4`` on a GPU.

    Returns ``(model, schedule, info)``: the :class:`ConditionalDenoiser` in eval mode, its
    :class:`NoiseSchedule`, and ``load_or_train``'s info (``info["history"]``: the fit History).
    """
    from ..data.tensors import TensorDictDataset  # medmm_lite.data (and SciPy) load on first use

    if condition not in CONDITIONS + (None,):
        raise ValueError(f"condition must be one of {CONDITIONS} or None, got {condition!r}")
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
    steps = steps or P.steps
    lr = lr or P.lr
    device = device or P.device
    base_channels = base_channels or (16 if str(device).startswith("cpu") else max(16, P.dim // 4))
    sched = NoiseSchedule(num_steps, schedule)
    train_idx = torch.as_tensor(np.asarray(data.splits["train"]), dtype=torch.long)
    batch_size = min(batch_size or P.batch_size, len(train_idx))
    images = data.cohort.images[train_idx]
    image_size = image_size or int(images.shape[-1])
    images = resize_images(images, image_size)
    tensors = {"image": to_model_range(images)}
    vocab_size = None
    if condition == "findings":
        tensors["labels"] = torch.as_tensor(data.cohort.labels)[train_idx].float()
    elif condition == "report":
        tensors["input_ids"], tensors["attention_mask"] = data.input_ids[train_idx], data.attention_mask[train_idx]
        vocab_size = len(data.tokenizer)
    n_findings = int(torch.as_tensor(data.cohort.labels).shape[1])

    def build():
        text = None
        if condition == "report":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                text = text_encoder(P, vocab_size, depth=min(P.depth, 2))
        return build_denoiser(image_size, condition=condition, n_findings=n_findings, text_encoder=text,
                              base_channels=base_channels, channel_mults=channel_mults, attention=attention,
                              seed=seed)

    def train_fn(model):
        generator = torch.Generator().manual_seed(seed + 1)

        def loss_fn(m, batch):
            cond = (batch["labels"] if condition == "findings"
                    else (batch["input_ids"], batch["attention_mask"]) if condition == "report" else None)
            return diffusion_loss(m, sched, batch["image"], cond, drop_prob=drop_prob, generator=generator)

        return fit(model, loss_fn, TensorDictDataset(**tensors), steps=steps, batch_size=batch_size, lr=lr,
                   weight_decay=0.0, seed=seed, device=device, amp=P.amp, progress=progress,
                   desc=f"DDPM ({condition or 'unconditional'})", rng=generator)

    train_labels = torch.as_tensor(data.cohort.labels)[train_idx].float()
    labels_hash = hashlib.sha256(train_labels.numpy().tobytes()).hexdigest()[:16]
    key = {"profile": P.name, "labels": labels_hash, "image_size": image_size, "dim": P.dim, "depth": P.depth,
           "heads": P.heads, "max_text_len": P.max_text_len, "data": data_fingerprint(data), "dataset": dataset,
           "n_train": len(train_idx), "vocab_size": vocab_size, "seed": seed, "steps": steps,
           "batch_size": batch_size, "lr": float(lr), "condition": condition, "num_steps": num_steps,
           "schedule": schedule, "drop_prob": float(drop_prob), "base_channels": base_channels,
           "channel_mults": list(channel_mults), "attention": bool(attention), "amp": bool(P.amp)}
    model, info = load_or_train("ddpm", train_fn, build_fn=build, key=key, device=device, retrain=retrain)
    return model.eval(), sched, info


__all__ = ["NoiseSchedule", "SCHEDULES", "CONDITIONS", "q_sample", "q_step", "predict_x0", "to_model_range",
           "from_model_range", "resize_images", "FindingEmbedding", "ReportEmbedding", "drop_condition",
           "ConditionalDenoiser", "build_denoiser", "diffusion_loss", "check_guidance", "guided_eps",
           "sampling_timesteps", "ddim_step", "sample", "findings_from_reports", "train_ddpm"]
