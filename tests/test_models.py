"""Unit tests of medmm_lite.models: shapes, equivalence with timm / HF / open_clip /
torchvision (weights copied across), masks, caches, bad input, and a learning signal."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn as nn

from medmm_lite.models import (
    CNNEncoder, DropPath, ImageFeatures, TextDecoder, TextEncoder, TextFeatures, ViT,
    count_parameters, generate, patchify, sincos_pos_embed_2d, unpatchify,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- ViT


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_shapes_and_attributes(pos_embed, pool):
    vit = ViT(32, 8, in_chans=1, dim=32, depth=2, heads=4, pos_embed=pos_embed, pool=pool)
    out = vit(torch.rand(3, 1, 32, 32))
    assert isinstance(out, ImageFeatures)
    assert out.global_features.shape == (3, 32)
    assert out.local_features.shape == (3, 16, 32)
    assert (vit.dim, vit.local_dim, vit.grid_size, vit.num_patches) == (32, 32, (4, 4), 16)
    assert vit.pos_embed.shape == (1, 17, 32)
    if pool == "mean":
        torch.testing.assert_close(out.global_features, out.local_features.mean(1))


def test_vit_non_square_grid():
    vit = ViT((32, 48), 8, in_chans=2, dim=32, depth=1, heads=2)
    out = vit(torch.rand(2, 2, 32, 48))
    assert vit.grid_size == (4, 6) and out.local_features.shape == (2, 24, 32)


def timm_vit(image_size, patch_size, in_chans, dim, depth, heads, mlp_ratio=4.0):
    timm = pytest.importorskip("timm")
    return timm.models.vision_transformer.VisionTransformer(
        img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=0, embed_dim=dim,
        depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, class_token=True, global_pool="token")


def timm_to_ours(timm_state: dict) -> dict:
    """Map timm's VisionTransformer state dict onto ours. Our names were chosen to be
    timm's, so the mapping is the identity; it checks that nothing is left over."""
    mapping = {name: name for name in timm_state}  # patch_embed.proj.*, cls_token, pos_embed, blocks.i.*, norm.*
    return {mapping[name]: tensor for name, tensor in timm_state.items()}


SIZES = [  # image_size, patch, in_chans, dim, depth, heads, mlp_ratio
    (64, 8, 1, 128, 4, 4, 4.0),   # the cpu profile
    (32, 8, 1, 64, 2, 4, 4.0),    # the smoke profile
    (48, 16, 3, 96, 3, 6, 2.0),
]


@pytest.mark.parametrize("size", SIZES)
def test_vit_parameter_count_matches_timm(size):
    *args, mlp_ratio = size
    ours, theirs = ViT(*args, mlp_ratio=mlp_ratio), timm_vit(*args, mlp_ratio=mlp_ratio)
    assert count_parameters(ours) == count_parameters(theirs)


@pytest.mark.parametrize("size", [SIZES[0], SIZES[2], ((32, 48), 8, 2, 64, 2, 4, 4.0)])
def test_vit_matches_timm_with_copied_weights(size):
    *args, mlp_ratio = size
    torch.manual_seed(0)
    theirs = timm_vit(*args, mlp_ratio=mlp_ratio).eval()
    ours = ViT(*args, mlp_ratio=mlp_ratio).eval()
    ours.load_state_dict(timm_to_ours(theirs.state_dict()), strict=True)
    image_size = args[0] if isinstance(args[0], tuple) else (args[0], args[0])
    images = torch.randn(4, args[2], *image_size)
    with torch.no_grad():
        out = ours(images)
        tokens = theirs.forward_features(images)
        torch.testing.assert_close(out.global_features, theirs(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.local_features, tokens[:, 1:], atol=1e-5, rtol=0)


def test_vit_gradients_match_timm():
    torch.manual_seed(1)
    args = (32, 8, 1, 64, 2, 4)
    theirs, ours = timm_vit(*args), ViT(*args)
    ours.load_state_dict(timm_to_ours(theirs.state_dict()))
    images = torch.randn(3, 1, 32, 32)
    ours(images).global_features.pow(2).sum().backward()
    theirs(images).pow(2).sum().backward()
    grads = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, grads[name].grad, atol=1e-5, rtol=1e-4)


def test_vit_mae_recipe_reproduces_forward_and_drops_tokens():
    torch.manual_seed(0)
    vit = ViT(32, 8, 1, 32, 2, 4, pos_embed="sincos").eval()
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        tokens = vit.forward_tokens(vit.prepend_cls(vit.embed_patches(images)))
        torch.testing.assert_close(vit.pool_tokens(tokens).global_features, vit(images).global_features)
        # keep 4 of 16 patches, as MAE's random_masking would
        x = vit.embed_patches(images)
        keep = torch.stack([torch.randperm(16)[:4] for _ in range(2)])
        kept = torch.gather(x, 1, keep[..., None].expand(-1, -1, 32))
        latent = vit.forward_tokens(vit.prepend_cls(kept))
    assert latent.shape == (2, 5, 32)
    # the patch tokens carry their own positions: kept token j equals patch keep[j] of the full embedding
    torch.testing.assert_close(kept[0, 0], x[0, keep[0, 0]])


def test_vit_initialisation_follows_timm_mae():
    torch.manual_seed(0)
    vit = ViT(64, 8, 1, 128, 2, 4)
    assert abs(vit.pos_embed.std().item() - 0.02) < 0.003 and abs(vit.cls_token.std().item() - 0.02) < 0.01
    qkv = vit.blocks[0].attn.qkv
    assert abs(qkv.weight.std().item() - 0.02) < 0.002 and qkv.bias.abs().max() == 0
    w = vit.patch_embed.proj.weight.flatten(1)
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))  # xavier-uniform on the flattened patch
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(vit.norm.weight == 1) and torch.all(vit.norm.bias == 0)


def test_sincos_positions_match_transformers_and_are_frozen():
    mae = pytest.importorskip("transformers.models.vit_mae.modeling_vit_mae")
    ours = sincos_pos_embed_2d(4, 6, 32, cls_token=True)[0]
    theirs = mae.build_2d_sinusoidal_position_embedding(4, 6, embed_dim=32, cls_token=True)
    torch.testing.assert_close(ours, theirs)
    vit = ViT(32, 8, 1, 32, 1, 4, pos_embed="sincos")
    torch.testing.assert_close(vit.pos_embed[0], sincos_pos_embed_2d(4, 4, 32)[0])
    assert not vit.pos_embed.requires_grad
    assert count_parameters(vit, trainable_only=True) == count_parameters(vit) - 17 * 32


def test_patchify_matches_mae_convention_and_round_trips():
    mae = pytest.importorskip("transformers.models.vit_mae.modeling_vit_mae")
    from transformers import ViTMAEConfig
    images = torch.randn(2, 3, 16, 16)
    patches = patchify(images, 4)
    assert patches.shape == (2, 16, 48)
    # patch n = (i, j) holds rows, then columns, then channels
    torch.testing.assert_close(patches[1, 1 * 4 + 2], images[1, :, 4:8, 8:12].permute(1, 2, 0).flatten())
    config = ViTMAEConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=12, num_hidden_layers=1,
                          num_attention_heads=1, intermediate_size=12, decoder_hidden_size=12,
                          decoder_num_hidden_layers=1, decoder_num_attention_heads=1, decoder_intermediate_size=12)
    hf = mae.ViTMAEForPreTraining(config)
    torch.testing.assert_close(patches, hf.patchify(images))
    torch.testing.assert_close(unpatchify(patches, 4, 3), images)
    torch.testing.assert_close(unpatchify(hf.patchify(images), 4, 3), hf.unpatchify(patches))
    wide = torch.randn(1, 2, 8, 12)
    torch.testing.assert_close(unpatchify(patchify(wide, 4), 4, 2, grid_size=(2, 3)), wide)


def test_patch_helpers_reject_bad_shapes():
    with pytest.raises(ValueError, match="divisible by patch_size=4"):
        patchify(torch.zeros(1, 1, 10, 12), 4)
    with pytest.raises(ValueError, match="p\\*p\\*C"):
        unpatchify(torch.zeros(1, 4, 10), 4, 1)
    with pytest.raises(ValueError, match="square grid"):
        unpatchify(torch.zeros(1, 6, 16), 4, 1)


def test_vit_bad_input_messages():
    vit = ViT(64, 8, 1, 32, 1, 4)
    with pytest.raises(ValueError, match=r"ViT expected images of shape \(B, 1, 64, 64\), got \(8, 3, 64, 64\)"):
        vit(torch.zeros(8, 3, 64, 64))
    with pytest.raises(ValueError, match=r"got \(8, 64, 64\).*unsqueeze\(1\)"):
        vit(torch.zeros(8, 64, 64))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\)"):
        vit(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="float tensor, got torch.uint8"):
        vit(torch.zeros(2, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divisible by heads"):
        ViT(64, 8, 1, 30, 1, 4)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        ViT(60, 8, 1, 32, 1, 4)
    with pytest.raises(ValueError, match="pos_embed"):
        ViT(64, 8, 1, 32, 1, 4, pos_embed="rope")


def test_drop_path_is_random_in_training_only():
    layer = DropPath(0.5)
    x = torch.ones(1000, 3)
    layer.train()
    y = layer(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.4 < kept < 0.6 and torch.all((y == 0) | (y == 2))  # whole samples dropped, survivors scaled by 2
    layer.eval()
    assert torch.equal(layer(x), x)
    vit = ViT(32, 8, 1, 32, 3, 4, drop_path=0.2)
    assert [b.drop_path.p for b in vit.blocks] == pytest.approx([0.0, 0.1, 0.2])


# --------------------------------------------------------------------------- CNN


def test_cnn_shapes_and_grid():
    cnn = CNNEncoder(in_chans=1, image_size=64)
    out = cnn(torch.rand(2, 1, 64, 64))
    assert out.global_features.shape == (2, 256) and out.local_features.shape == (2, 16, 256)
    assert (cnn.dim, cnn.local_dim, cnn.grid_size, cnn.reduction) == (256, 256, (4, 4), 16)
    projected = CNNEncoder(widths=(8, 16), dim=32, image_size=32, stem_stride=1)
    out = projected(torch.rand(2, 1, 32, 32))
    assert out.global_features.shape == (2, 32) and out.local_features.shape == (2, 256, 16)
    assert projected.grid_size == (16, 16)
    free = CNNEncoder(widths=(8, 16))   # no image_size: any multiple of the stride
    assert free.grid_size is None and free.grid_size_for(48) == (12, 12)
    assert free(torch.rand(1, 1, 48, 32)).local_features.shape == (1, 12 * 8, 16)


def test_cnn_local_features_are_the_last_feature_map():
    cnn = CNNEncoder(widths=(8, 16), image_size=32).eval()
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        fmap = cnn.stages(cnn.stem(images))
        out = cnn(images)
    torch.testing.assert_close(out.local_features, fmap.flatten(2).transpose(1, 2))
    torch.testing.assert_close(out.global_features, fmap.mean(dim=(2, 3)))


def test_cnn_stages_match_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    ours = CNNEncoder(in_chans=3, widths=(64, 128, 256, 512), blocks_per_stage=2).eval()
    ref_layers = nn.Sequential(ref.layer1, ref.layer2, ref.layer3, ref.layer4)
    state = {}
    for name, tensor in ref_layers.state_dict().items():  # e.g. 1.0.downsample.0.weight -> 1.0.shortcut.0.weight
        state[name.replace("downsample", "shortcut")] = tensor
    ours.stages.load_state_dict(state, strict=True)
    assert count_parameters(ours.stages) == count_parameters(ref_layers)
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.stages(x), ref_layers(x), atol=1e-5, rtol=1e-5)


def test_cnn_bad_input():
    cnn = CNNEncoder(image_size=64)
    with pytest.raises(ValueError, match=r"CNNEncoder expected images of shape \(B, 1, 64, 64\), got \(2, 3, 64, 64\)"):
        cnn(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="divisible by 16"):
        CNNEncoder()(torch.zeros(1, 1, 40, 40))
    with pytest.raises(ValueError, match="total stride"):
        CNNEncoder(image_size=40)


# --------------------------------------------------------------------------- text encoder


def test_text_encoder_shapes():
    enc = TextEncoder(100, 32, 2, 4, max_len=16)
    ids = torch.randint(1, 100, (3, 10))
    out = enc(ids)
    assert isinstance(out, TextFeatures)
    assert out.global_features.shape == (3, 32) and out.token_features.shape == (3, 10, 32)
    torch.testing.assert_close(out.global_features, out.token_features[:, 0])


def test_text_encoder_parameter_count_matches_bert_after_documented_differences():
    transformers = pytest.importorskip("transformers")
    vocab, dim, depth, heads, max_len = 600, 128, 4, 4, 64
    ours = TextEncoder(vocab, dim, depth, heads, max_len)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=vocab, hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=4 * dim, max_position_embeddings=max_len))
    token_type = bert.embeddings.token_type_embeddings.weight.numel()   # 2 x dim, absent here
    pooler = count_parameters(bert.pooler)                              # dim x dim + dim, absent here
    # BERT's embedding LayerNorm (2*dim) is our final LayerNorm: same count, other place
    assert count_parameters(ours) == count_parameters(bert) - token_type - pooler


def open_clip_blocks(dim, depth, heads):
    transformer = pytest.importorskip("open_clip.transformer")
    return transformer.Transformer(dim, depth, heads, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6)).eval()


def blocks_from_open_clip(open_clip_state: dict) -> dict:
    """open_clip Transformer names -> our ModuleList of Blocks (nn.MultiheadAttention fuses q, k, v too)."""
    renames = [("resblocks.", ""), ("ln_1", "norm1"), ("ln_2", "norm2"), ("attn.in_proj_", "attn.qkv."),
               ("attn.out_proj", "attn.proj"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]
    out = {}
    for name, tensor in open_clip_state.items():
        for old, new in renames:
            name = name.replace(old, new)
        out[name] = tensor
    return out


def test_text_encoder_matches_open_clip_transformer_with_padding():
    torch.manual_seed(0)
    dim, depth, heads, L = 32, 2, 4, 9
    enc = TextEncoder(50, dim, depth, heads, max_len=16).eval()
    ref = open_clip_blocks(dim, depth, heads)
    enc.blocks.load_state_dict(blocks_from_open_clip(ref.state_dict()), strict=True)
    ids = torch.randint(1, 50, (3, L))
    ids[0, 6:] = 0
    ids[2, 3:] = 0
    with torch.no_grad():
        ours = enc(ids).token_features
        x = enc.token_embed(ids) + enc.pos_embed(torch.arange(L))
        pad = (ids == 0)[:, None, :].expand(-1, L, -1)                       # (B, L_query, L_key)
        additive = torch.zeros(3, L, L).masked_fill(pad, float("-inf")).repeat_interleave(heads, 0)
        theirs = enc.norm(ref(x, attn_mask=additive))
    real = ids != 0
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)


def test_text_encoder_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    enc = TextEncoder(50, 32, 2, 4, max_len=16).eval()
    ids = torch.randint(1, 50, (2, 7))
    padded = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short, long = enc(ids), enc(padded)
        explicit = enc(padded, attention_mask=(padded != 0).long())
        # garbage in the padded positions is invisible once masked
        noisy = padded.clone()
        noisy[:, 7:] = torch.randint(1, 50, (2, 5))
        masked_noise = enc(noisy, attention_mask=(padded != 0).long())
    for other in (long, explicit, masked_noise):
        torch.testing.assert_close(other.token_features[:, :7], short.token_features, atol=1e-5, rtol=0)
        torch.testing.assert_close(other.global_features, short.global_features, atol=1e-5, rtol=0)


def test_text_encoder_bad_input():
    enc = TextEncoder(100, 32, 1, 4, max_len=64)
    with pytest.raises(ValueError, match="got 80 tokens, the model's context is 64; truncate with the tokenizer's max_length"):
        enc(torch.ones(2, 80, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 100 is outside the vocabulary"):
        enc(torch.tensor([[1, 100]]))
    with pytest.raises(ValueError, match=r"shape \(B, L\), got \(5,\)"):
        enc(torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        enc(torch.ones(1, 5))
    with pytest.raises(ValueError, match=r"attention_mask of shape \(1, 5\)"):
        enc(torch.ones(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="all padding"):
        enc(torch.tensor([[1, 2], [0, 0]]))


# --------------------------------------------------------------------------- text decoder


def gpt2_to_ours(gpt2_state: dict, depth: int) -> dict:
    """transformers GPT2LMHeadModel -> TextDecoder. GPT-2's Conv1D stores (in, out), a Linear (out, in)."""
    out = {"token_embed.weight": gpt2_state["transformer.wte.weight"],
           "pos_embed.weight": gpt2_state["transformer.wpe.weight"],
           "norm.weight": gpt2_state["transformer.ln_f.weight"], "norm.bias": gpt2_state["transformer.ln_f.bias"],
           "lm_head.weight": gpt2_state["lm_head.weight"]}
    norms = {"norm1": "ln_1", "norm_cross": "ln_cross_attn", "norm2": "ln_2"}
    linears = {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "cross_attn.q": "crossattention.q_attn",
               "cross_attn.kv": "crossattention.c_attn", "cross_attn.proj": "crossattention.c_proj",
               "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(depth):
        theirs = f"transformer.h.{i}."
        for ours_name, their_name in norms.items():
            if theirs + their_name + ".weight" in gpt2_state:
                for kind in ("weight", "bias"):
                    out[f"blocks.{i}.{ours_name}.{kind}"] = gpt2_state[f"{theirs}{their_name}.{kind}"]
        for ours_name, their_name in linears.items():
            if theirs + their_name + ".weight" in gpt2_state:
                out[f"blocks.{i}.{ours_name}.weight"] = gpt2_state[f"{theirs}{their_name}.weight"].t()
                out[f"blocks.{i}.{ours_name}.bias"] = gpt2_state[f"{theirs}{their_name}.bias"]
    return out


def make_gpt2(vocab, dim, depth, heads, max_len, cross_attention):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=max_len, n_embd=dim, n_layer=depth, n_head=heads, bos_token_id=1,
        eos_token_id=2, activation_function="gelu", layer_norm_epsilon=1e-6, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, add_cross_attention=cross_attention)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("cross_attention", [False, True])
def test_text_decoder_matches_gpt2_with_copied_weights(cross_attention):
    torch.manual_seed(0)
    vocab, dim, depth, heads, max_len = 50, 32, 2, 4, 16
    gpt2 = make_gpt2(vocab, dim, depth, heads, max_len, cross_attention)
    ours = TextDecoder(vocab, dim, depth, heads, max_len, cross_attention=cross_attention).eval()
    ours.load_state_dict(gpt2_to_ours(gpt2.state_dict(), depth), strict=True)
    assert count_parameters(ours) == count_parameters(gpt2)
    ids = torch.randint(0, vocab, (3, 10))
    kwargs, their_kwargs = {}, {}
    if cross_attention:
        context, context_mask = torch.randn(3, 7, dim), torch.ones(3, 7, dtype=torch.long)
        context_mask[0, 4:] = 0
        kwargs = dict(context=context, context_mask=context_mask)
        their_kwargs = dict(encoder_hidden_states=context, encoder_attention_mask=context_mask)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, **kwargs).logits, gpt2(input_ids=ids, **their_kwargs).logits,
                                   atol=1e-5, rtol=0)


def test_text_decoder_shapes_and_tied_weights():
    dec = TextDecoder(60, 32, 2, 4, max_len=16, cross_attention=True, context_dim=48)
    out = dec(torch.randint(0, 60, (2, 9)), context=torch.randn(2, 5, 48))
    assert out.logits.shape == (2, 9, 60) and out.hidden_states.shape == (2, 9, 32)
    assert out.past_key_values is None
    assert dec.lm_head.weight is dec.token_embed.weight
    untied = TextDecoder(60, 32, 2, 4, max_len=16, cross_attention=True, context_dim=48, tie_weights=False)
    assert count_parameters(untied) - count_parameters(dec) == 60 * 32


def test_causal_mask_future_tokens_do_not_change_the_past():
    torch.manual_seed(0)
    dec = TextDecoder(40, 32, 2, 4, max_len=16, cross_attention=True).eval()
    context = torch.randn(2, 3, 32)
    ids = torch.randint(0, 40, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = torch.randint(0, 40, (2, 4))
    with torch.no_grad():
        a, b = dec(ids, context=context).logits, dec(changed, context=context).logits
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    dec = TextDecoder(40, 32, 3, 4, max_len=20, cross_attention=True, context_dim=24).eval()
    ids = torch.randint(0, 40, (2, 12))
    context, context_mask = torch.randn(2, 5, 24), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        full = dec(ids, context=context, context_mask=context_mask).logits
        # prefill 5 tokens, then a chunk of 3 (explicit offset-causal mask), then one at a time
        out = dec(ids[:, :5], context=context, context_mask=context_mask, use_cache=True)
        pieces = [out.logits]
        out = dec(ids[:, 5:8], context_mask=context_mask, past_key_values=out.past_key_values, use_cache=True)
        pieces.append(out.logits)
        for t in range(8, 12):
            out = dec(ids[:, t:t + 1], context_mask=context_mask, past_key_values=out.past_key_values, use_cache=True)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
    assert out.past_key_values[0].key.shape == (2, 4, 12, 8)
    assert out.past_key_values[0].cross_key.shape == (2, 4, 5, 8)


def test_decoder_right_padding_mask_and_prefix_embeds():
    torch.manual_seed(0)
    dec = TextDecoder(40, 32, 2, 4, max_len=20).eval()
    ids = torch.randint(3, 40, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    prefix = torch.randn(2, 3, 32)
    with torch.no_grad():
        plain = dec(ids).logits
        masked = dec(ids, attention_mask=mask).logits
        torch.testing.assert_close(masked[1, :5], plain[1, :5], atol=1e-5, rtol=0)
        torch.testing.assert_close(masked[0], plain[0], atol=1e-5, rtol=0)
        # a prefix is the same as tokens whose embeddings happen to be those vectors
        with_prefix = dec(ids, prefix_embeds=prefix)
        assert with_prefix.logits.shape == (2, 11, 40)
        cached = dec(ids[:, :1], prefix_embeds=prefix, use_cache=True)
        rest = dec(ids[:, 1:], past_key_values=cached.past_key_values, use_cache=True)
        torch.testing.assert_close(torch.cat([cached.logits, rest.logits], 1), with_prefix.logits, atol=1e-5, rtol=0)
        # a token-only mask with a prefix is widened with ones for the prefix
        torch.testing.assert_close(dec(ids, prefix_embeds=prefix, attention_mask=torch.ones(2, 8)).logits,
                                   with_prefix.logits, atol=1e-5, rtol=0)


def test_decoder_loss_ignores_padding_and_uses_labels():
    torch.manual_seed(0)
    dec = TextDecoder(30, 32, 2, 4, max_len=16)
    ids = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 8, 9, 2, 0, 0, 0]])
    logits = dec(ids).logits[:, :-1]
    targets = ids[:, 1:]
    keep = targets != 0
    expected = nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(dec.loss(ids), expected)
    torch.testing.assert_close(dec.loss(ids, attention_mask=(ids != 0).long()), expected)
    labels = torch.full_like(ids, -100)
    labels[:, 2:4] = ids[:, 2:4]                 # e.g. only the answer tokens of an instruction
    only = labels[:, 1:] != -100
    torch.testing.assert_close(dec.loss(ids, labels=labels), nn.functional.cross_entropy(logits[only], targets[only]))
    with pytest.raises(ValueError, match="every target is ignored"):
        dec.loss(torch.tensor([[1, 0, 0]]))


def test_decoder_bad_input():
    dec = TextDecoder(30, 32, 1, 4, max_len=8, cross_attention=True)
    with pytest.raises(ValueError, match="needs context"):
        dec(torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"context must be \(B=1, N, context_dim=32\)"):
        dec(torch.ones(1, 3, dtype=torch.long), context=torch.zeros(1, 4, 16))
    with pytest.raises(ValueError, match="the model's context is 8"):
        dec(torch.ones(1, 9, dtype=torch.long), context=torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="hides every context entry"):
        dec(torch.ones(1, 3, dtype=torch.long), context=torch.zeros(1, 4, 32), context_mask=torch.zeros(1, 4))
    plain = TextDecoder(30, 32, 1, 4, max_len=8)
    with pytest.raises(ValueError, match="without cross_attention"):
        plain(torch.ones(1, 3, dtype=torch.long), context=torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="context_dim is only used"):
        TextDecoder(30, 32, 1, 4, max_len=8, context_dim=16)


# --------------------------------------------------------------------------- determinism and learning


def test_same_seed_same_model_and_outputs():
    def build():
        torch.manual_seed(123)
        return ViT(32, 8, 1, 32, 2, 4), TextDecoder(30, 32, 2, 4, 16)
    (vit_a, dec_a), (vit_b, dec_b) = build(), build()
    for a, b in ((vit_a, vit_b), (dec_a, dec_b)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    images, ids = torch.rand(2, 1, 32, 32), torch.randint(0, 30, (2, 6))
    assert torch.equal(vit_a(images).global_features, vit_b(images).global_features)
    assert torch.equal(dec_a(ids).logits, dec_b(ids).logits)


BOS, EOS, SEP = 1, 2, 3


def copy_batch(batch, n, vocab, generator):
    seq = torch.randint(4, vocab, (batch, n), generator=generator)
    col = lambda t: torch.full((batch, 1), t)  # noqa: E731
    return seq, torch.cat([col(BOS), seq, col(SEP), seq, col(EOS)], dim=1)


def test_decoder_learns_to_copy_a_sequence():
    """A 2-block decoder learns "a b c d SEP -> a b c d EOS" for random sequences in
    150 steps (an induction head): the loss falls and greedy decoding copies unseen ones."""
    torch.manual_seed(0)
    n, vocab = 4, 12
    dec = TextDecoder(vocab, 64, 2, 4, max_len=2 * n + 3)
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        _, ids = copy_batch(64, n, vocab, gen)
        labels = ids.clone()
        labels[:, :n + 2] = -100                 # the loss is on the copy only
        loss = dec.loss(ids, labels=labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and max(losses[-10:]) < 0.05
    _, ids = copy_batch(64, n, vocab, torch.Generator().manual_seed(1))
    out = generate(dec, prompt_ids=ids[:, :n + 2], eos_id=EOS, max_new_tokens=n + 1)
    assert (out == ids[:, n + 2:]).all(dim=1).float().mean() >= 0.95


def test_cross_attention_decoder_learns_to_read_its_context():
    """Captioning in miniature: the sequence is only in the context (one-hot token +
    one-hot position per entry); the decoder must read it through cross-attention."""
    torch.manual_seed(0)
    n, vocab = 4, 12
    dec = TextDecoder(vocab, 64, 2, 4, max_len=n + 2, cross_attention=True, context_dim=vocab + n)
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def make(batch, generator):
        seq, _ = copy_batch(batch, n, vocab, generator)
        context = torch.cat([nn.functional.one_hot(seq, vocab), torch.eye(n).expand(batch, n, n)], dim=2).float()
        ids = torch.cat([torch.full((batch, 1), BOS), seq, torch.full((batch, 1), EOS)], dim=1)
        return context, ids

    for _ in range(150):
        context, ids = make(64, gen)
        loss = dec.loss(ids, context=context)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    context, ids = make(64, torch.Generator().manual_seed(1))
    out = generate(dec, context, bos_id=BOS, eos_id=EOS, max_new_tokens=n + 1)
    assert (out == ids[:, 1:]).all(dim=1).float().mean() >= 0.95
