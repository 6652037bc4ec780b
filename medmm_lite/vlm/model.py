"""The LLaVA architecture: a frozen vision encoder, a projector, a causal language model.

    image --ViT--> patch features (K, d_vision) --projector--> K "image tokens" (K, d_lm)
    prompt ids  [BOS] <|user|> <image> is there ... <|assistant|>
    embeddings  e(BOS) e(user) [img_1 ... img_K] e(is) ... e(assistant)   <- the K tokens replace <image>

The spliced sequence goes into the language model through ``inputs_embeds``, exactly as
LLaVA's ``prepare_inputs_labels_for_multimodal`` does. Here every sequence holds exactly
one ``<image>``, so splicing adds K - 1 positions to every row alike: a right-padded batch
stays right-padded and a left-padded one left-padded, and the splice is one gather.

Padding: right for training (the labels line up with the text as written), left for
generation (every row's next token is then at the same last column, so a batch extends
together). Positions come from the attention mask, ``cumsum(mask) - 1``, so a
left-padded row still starts at position 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .instructions import IGNORE_INDEX, pad_batch, special_ids
from .language_model import cache_keyword, cache_of

PROJECTORS = ("mlp", "linear")


class Projector(nn.Module):
    """Vision features -> language-model embeddings. ``"mlp"``: Linear-GELU-Linear (LLaVA-1.5's
    ``mlp2x_gelu``); ``"linear"``: one matrix (LLaVA-1)."""

    def __init__(self, vision_dim: int, lm_dim: int, kind: str = "mlp"):
        super().__init__()
        if kind not in PROJECTORS:
            raise ValueError(f"projector must be one of {PROJECTORS}, got {kind!r}")
        self.kind = kind
        self.net = (nn.Linear(vision_dim, lm_dim) if kind == "linear" else
                    nn.Sequential(nn.Linear(vision_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim)))

    def forward(self, x):
        return self.net(x)


def image_token_positions(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """The column of the single ``<image>`` in each row; a clear error if a row has none or several."""
    hits = input_ids == image_token_id
    counts = hits.sum(1)
    if not bool((counts == 1).all()):
        bad = int(torch.nonzero(counts != 1)[0, 0])
        raise ValueError(f"every sequence needs exactly one <image> placeholder (id {image_token_id}); row {bad} "
                         f"has {int(counts[bad])}. Put it in the first user turn, as encode_conversation does")
    return hits.float().argmax(1)


def splice_image_tokens(text_embeds, input_ids, image_embeds, image_token_id: int, attention_mask=None, labels=None):
    """Replace each row's ``<image>`` by its K image embeddings.

    Args:
        text_embeds: (B, L, D) the embeddings of ``input_ids``.
        input_ids: (B, L) with exactly one ``image_token_id`` per row.
        image_embeds: (B, K, D) the projected image tokens.
        attention_mask: (B, L) 1 real / 0 padding (default all ones).
        labels: (B, L) or None; the image positions get ``IGNORE_INDEX``.

    Returns:
        ``(embeds (B, L+K-1, D), attention_mask (B, L+K-1), labels or None, position_ids (B, L+K-1))``.
    """
    B, L, D = text_embeds.shape
    if image_embeds.ndim != 3 or image_embeds.shape[0] != B or image_embeds.shape[2] != D:
        raise ValueError(f"image_embeds must be (B={B}, K, D={D}), got {tuple(image_embeds.shape)}")
    K = image_embeds.shape[1]
    pos = image_token_positions(input_ids, image_token_id)                  # (B,)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    j = torch.arange(L + K - 1, device=input_ids.device).unsqueeze(0)       # output columns
    p = pos.unsqueeze(1)
    is_image = (j >= p) & (j < p + K)
    # text source column: j before the image, j - K + 1 after it (clamped inside the image span)
    src = torch.where(j < p, j, j - K + 1).clamp(0, L - 1)
    img_src = (j - p).clamp(0, K - 1)
    gathered_text = torch.gather(text_embeds, 1, src.unsqueeze(-1).expand(B, -1, D))
    gathered_image = torch.gather(image_embeds, 1, img_src.unsqueeze(-1).expand(B, -1, D))
    embeds = torch.where(is_image.unsqueeze(-1), gathered_image.to(gathered_text.dtype), gathered_text)
    mask = torch.where(is_image, torch.ones_like(src), torch.gather(attention_mask, 1, src))
    new_labels = None
    if labels is not None:
        new_labels = torch.where(is_image, torch.full_like(src, IGNORE_INDEX), torch.gather(labels, 1, src))
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    return embeds, mask, new_labels, position_ids


class VisionLanguageModel(nn.Module):
    """LLaVA in miniature: ``vision`` (frozen) -> pooled patch grid -> ``projector`` -> ``lm``.

    Args:
        vision: an image encoder returning ``.local_features`` (B, N, d) on a ``grid_size`` grid (the course's ViT).
        lm: a Hugging Face causal LM (``LlamaForCausalLM``).
        tokenizer: the VLM tokenizer (``vlm_tokenizer``), kept as ``.tokenizer`` for prompting.
        image_grid: the patch grid is average-pooled to ``image_grid x image_grid`` tokens (fewer
            tokens, faster; LLaVA keeps all 576 of a 24 x 24 grid); the encoder's global feature
            (CLIP's [CLS], the one its contrastive loss trained) comes first.
        projector: ``"mlp"`` or ``"linear"``.
    """

    def __init__(self, vision: nn.Module, lm: nn.Module, tokenizer, *, image_grid: int = 4, projector: str = "mlp"):
        super().__init__()
        self.vision = vision.requires_grad_(False)
        self.lm = lm
        self.tokenizer = tokenizer
        self.ids = special_ids(tokenizer)
        self.image_token_id = self.ids["image"]
        grid = getattr(vision, "grid_size", None)
        self.image_grid = min(int(image_grid), *(grid or (image_grid,)))
        self.num_image_tokens = 1 + self.image_grid ** 2
        vision_dim = getattr(vision, "local_dim", None) or vision.dim
        self.projector = Projector(vision_dim, lm.config.hidden_size, projector)
        # Standardisation of the frozen features (per token and channel), set from the training
        # images by set_feature_stats; identity until then. Saved with the model (buffers).
        self.register_buffer("feature_mean", torch.zeros(self.num_image_tokens, vision_dim))
        self.register_buffer("feature_std", torch.ones(self.num_image_tokens, vision_dim))
        self._cache_kw = cache_keyword(lm)

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor) -> "VisionLanguageModel":
        """Standardise image features with the mean and std of ``features`` (N, K, d), training images.

        Every chest X-ray shares the same anatomy, so the frozen encoder gives all images nearly
        the same vector (CLIP's projection head has a BatchNorm for the same reason, see
        ``pretrain.clip``); the differences that carry the findings are small. Standardising
        each feature with training statistics (a fixed, non-learned normalisation) hands the
        projector those differences at unit scale.
        """
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-4))
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.vision.eval()  # frozen, always in inference mode
        return self

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) images -> (B, K, d_vision): the encoder's global feature, then its patch
        features average-pooled to ``image_grid x image_grid``, row by row (K = 1 + grid^2)."""
        out = self.vision(images)
        local = out.local_features                                       # (B, N, d)
        h, w = self.vision.grid_size
        grid = local.transpose(1, 2).reshape(local.shape[0], -1, h, w)
        pooled = F.adaptive_avg_pool2d(grid, self.image_grid).flatten(2).transpose(1, 2)
        return torch.cat([out.global_features.unsqueeze(1), pooled], 1).contiguous()

    def embed(self, input_ids, image_features, attention_mask=None, labels=None):
        """Project the image features and splice them into the text embeddings at ``<image>``."""
        text = self.lm.get_input_embeddings()(input_ids)
        standardised = (image_features.to(text.dtype) - self.feature_mean) / self.feature_std
        image = self.projector(standardised)
        return splice_image_tokens(text, input_ids, image, self.image_token_id, attention_mask, labels)

    def forward(self, input_ids, attention_mask=None, labels=None, image_features=None, images=None, **kwargs):
        """The language model's output on the spliced sequence (``.loss`` when ``labels`` is given)."""
        if image_features is None:
            if images is None:
                raise ValueError("pass images or image_features")
            image_features = self.image_features(images)
        embeds, mask, labels, position_ids = self.embed(input_ids, image_features, attention_mask, labels)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, labels=labels, **kwargs)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def vlm_step(model: VisionLanguageModel, batch):
    """One training loss for ``fit``: the batch holds ``input_ids``, ``labels``, ``attention_mask``
    (right-padded) and ``image_features``; padding columns are trimmed first."""
    mask = batch["attention_mask"]
    longest = int(mask.sum(1).max())
    out = model(batch["input_ids"][:, :longest], mask[:, :longest], batch["labels"][:, :longest],
                image_features=batch["image_features"])
    return out.loss


# --------------------------------------------------------------------------- generation
def _prompt_batch(model, prompts, image_features):
    device = next(model.parameters()).device
    ids = pad_batch(prompts, model.ids["pad"], side="left").to(device)
    mask = pad_batch([[1] * len(p) for p in prompts], 0, side="left").to(device)
    return model.embed(ids, image_features.to(device), mask)


@torch.no_grad()
def generate(model: VisionLanguageModel, prompts, image_features, *, max_new_tokens: int = 32,
             use_cache: bool = True, batch_size: int = 128) -> list[list[int]]:
    """Greedy answers for prompt ids (lists, each with one ``<image>``, ending in ``<|assistant|>``).

    Prompts are left-padded and run as batches of ``batch_size``. With ``use_cache`` the prompt
    is read once and each new token costs one position (the KV cache: every layer's keys and
    values of earlier positions are kept); without it the whole sequence is re-read every step,
    which must give the same tokens. Returns the new token ids of each prompt, up to ``[EOS]``.
    """
    model.eval()
    eos = model.ids["eos"]
    embed_tokens = model.lm.get_input_embeddings()
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        embeds, mask, _, position_ids = _prompt_batch(model, chunk, image_features[start:start + batch_size])
        B = embeds.shape[0]
        done = torch.zeros(B, dtype=torch.bool, device=embeds.device)
        new = []
        cache = None
        step_embeds, step_pos = embeds, position_ids
        for _ in range(max_new_tokens):
            if use_cache:
                out = model.lm(inputs_embeds=step_embeds, attention_mask=mask, position_ids=step_pos,
                               use_cache=True, **({model._cache_kw: cache} if cache is not None else {}))
                cache = cache_of(out)
            else:
                out = model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False)
            token = out.logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, eos), token)
            new.append(token)
            done |= token == eos
            if bool(done.all()):
                break
            tok_embeds = embed_tokens(token).unsqueeze(1)
            next_pos = position_ids[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            embeds = torch.cat([embeds, tok_embeds], 1)
            position_ids = torch.cat([position_ids, next_pos], 1)
            step_embeds, step_pos = tok_embeds, next_pos
        tokens = torch.stack(new, 1).tolist()
        for row in tokens:
            results.append(row[:row.index(eos)] if eos in row else row)
    return results


@torch.no_grad()
def next_token_logits(model: VisionLanguageModel, prompts, image_features, *, batch_size: int = 256) -> torch.Tensor:
    """(N, vocab) logits of the token after each prompt (one forward pass, no generation)."""
    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        embeds, mask, _, position_ids = _prompt_batch(model, prompts[start:start + batch_size],
                                                      image_features[start:start + batch_size])
        logits = model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                          use_cache=False).logits
        out.append(logits[:, -1].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def batched_image_features(model: VisionLanguageModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Frozen-encoder features of many images, on the CPU: (N, K, d_vision)."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model.image_features(images[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(images), batch_size)])


__all__ = ["Projector", "PROJECTORS", "image_token_positions", "splice_image_tokens", "VisionLanguageModel",
           "vlm_step", "generate", "next_token_logits", "batched_image_features"]
