"""CoCa (medmm_lite.pretrain.coca): shapes, where the text embedding comes from, causality and
padding of the captioning loss, the weighted sum of the two losses, generation with a KV cache,
a tiny run that lowers both losses, the cached recipe and the registry entry."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medmm_lite
from medmm_lite.data.tensors import TensorDictDataset
from medmm_lite.data.tokenizer import encode_for_decoder, train_tokenizer
from medmm_lite.models import ViT, generate
from medmm_lite.objectives import clip_loss
from medmm_lite.pretrain import coca as K
from medmm_lite.train import fit

REPORTS = [
    "No pleural effusion or pneumothorax.",
    "Small left pleural effusion.",
    "Large right pneumothorax.",
    "Heart size is enlarged. No effusion.",
    "Patchy consolidation in the right lower lobe.",
    "Endotracheal tube terminates above the carina.",
    "Small nodule in the left upper lobe.",
    "Atelectasis at the left base. No pneumothorax.",
]
MAX_LEN = 16


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(REPORTS * 4, vocab_size=160, cache=False)


def tiny_model(vocab_size, seed=0, dim=32, uni=1, multi=1):
    torch.manual_seed(seed)
    vit = ViT(image_size=16, patch_size=8, in_chans=1, dim=dim, depth=1, heads=2)
    decoder = K.CoCaDecoder(vocab_size, dim, heads=2, max_len=MAX_LEN, unimodal_depth=uni, multimodal_depth=multi)
    return K.CoCaModel(vit, decoder, embed_dim=dim)


def pairs(tokenizer, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, mask = encode_for_decoder(tokenizer, REPORTS[:n], MAX_LEN)
    return {"image": torch.rand(n, 1, 16, 16, generator=g), "input_ids": ids, "attention_mask": mask}


# --------------------------------------------------------------------------- the model
def test_forward_shapes(tokenizer):
    model = tiny_model(len(tokenizer), uni=2, multi=1).eval()
    b = pairs(tokenizer)
    out = model(b["image"], b["input_ids"], b["attention_mask"])
    assert out.image_embeddings.shape == (8, 32) and out.text_embeddings.shape == (8, 32)
    assert out.logits.shape == (8, MAX_LEN, len(tokenizer))
    assert model.image_memory(b["image"]).shape == (8, 5, 32)       # the [CLS] and 2 x 2 patches
    cls, tokens = model.decoder.encode_text(b["input_ids"], b["attention_mask"])
    assert cls.shape == (8, 32) and tokens.shape == (8, MAX_LEN, 32)
    assert len(model.decoder.blocks) == 3 and model.decoder.lm_head.weight is model.decoder.token_embed.weight
    only_text = model(b["image"], b["input_ids"], b["attention_mask"], caption=False)
    assert only_text.logits is None and torch.allclose(only_text.text_embeddings, out.text_embeddings)
    only_caption = model(b["image"], b["input_ids"], b["attention_mask"], contrastive=False)
    assert only_caption.image_embeddings is None
    real = b["attention_mask"].bool()
    torch.testing.assert_close(only_caption.logits[real], out.logits[real])   # with or without the [CLS]


def test_the_text_embedding_comes_from_the_causal_tower_and_never_sees_the_image(tokenizer):
    model = tiny_model(len(tokenizer)).eval()
    b = pairs(tokenizer)
    a = model(b["image"], b["input_ids"], b["attention_mask"])
    other = model(torch.rand_like(b["image"]), b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(a.text_embeddings, other.text_embeddings)
    assert not torch.allclose(a.image_embeddings, other.image_embeddings)
    assert not torch.allclose(a.logits, other.logits)                 # the captioner does read the image
    # the [CLS] reads the whole real text, up to the last token ([EOS]) ...
    ids, mask = b["input_ids"].clone(), b["attention_mask"]
    last = mask.sum(1) - 1
    ids[torch.arange(8), last - 1] = (ids[torch.arange(8), last - 1] + 5) % len(tokenizer)
    changed = model.encode_text(ids, mask)
    assert not torch.allclose(changed, a.text_embeddings, atol=1e-5)
    # ... and nothing of the padding
    padded = b["input_ids"].masked_fill(mask == 0, 7)
    torch.testing.assert_close(model.encode_text(padded, mask), a.text_embeddings)
    # the library's trimming of all-padding columns changes nothing
    cls_full, _ = model.decoder.encode_text(b["input_ids"], mask)
    torch.testing.assert_close(model.text_projection(cls_full), a.text_embeddings)


def test_the_captioning_loss_is_causal_and_ignores_padding(tokenizer):
    model = tiny_model(len(tokenizer)).eval()
    b = pairs(tokenizer)
    ids, mask = b["input_ids"], b["attention_mask"]
    logits = model(b["image"], ids, mask).logits
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 3) % len(tokenizer)
    after = model(b["image"], changed, mask).logits
    torch.testing.assert_close(logits[:, :4], after[:, :4])           # earlier positions: unchanged
    assert not torch.allclose(logits[:, 4:], after[:, 4:])
    # padding: other ids there change neither the real positions' logits nor the loss
    padded = ids.masked_fill(mask == 0, 11)
    loss = K.caption_term(logits, ids, mask)
    torch.testing.assert_close(K.caption_term(model(b["image"], padded, mask).logits, padded, mask), loss)
    # by hand: minus the mean log-probability of every real next token
    log_p = logits[:, :-1].log_softmax(-1)
    real = mask[:, 1:].bool()
    nll = -log_p.gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(nll[real].mean(), loss)


def test_total_loss_is_one_contrastive_plus_two_captioning_and_the_contrastive_part_is_clip_loss(tokenizer):
    model = tiny_model(len(tokenizer)).train()
    b = pairs(tokenizer)
    total, parts = K.coca_loss(model, b["image"], b["input_ids"], b["attention_mask"])
    # each term on its own, through other paths than coca_loss
    image_emb = model.encode_image(b["image"])
    text_emb = model.encode_text(b["input_ids"], b["attention_mask"])
    expected_clip = clip_loss(image_emb, text_emb, model.logit_scale())
    memory = model.image_memory(b["image"])
    logits = model.decoder(b["input_ids"], context=memory).logits        # the generation path, no [CLS]
    targets = b["input_ids"][:, 1:].masked_fill(b["attention_mask"][:, 1:] == 0, -100)
    expected_caption = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       ignore_index=-100)
    torch.testing.assert_close(parts["contrastive"], expected_clip)
    torch.testing.assert_close(parts["caption"], expected_caption)
    torch.testing.assert_close(total, 1.0 * expected_clip + 2.0 * expected_caption)
    assert K.CONTRASTIVE_WEIGHT == 1.0 and K.CAPTION_WEIGHT == 2.0
    other, other_parts = K.coca_loss(model, b["image"], b["input_ids"], b["attention_mask"], 0.5, 3.0)
    torch.testing.assert_close(other, 0.5 * expected_clip + 3.0 * expected_caption)
    alone, alone_parts = K.coca_loss(model, b["image"], b["input_ids"], b["attention_mask"], 1.0, 0.0)
    assert set(alone_parts) == {"contrastive"}
    torch.testing.assert_close(alone, expected_clip)
    with pytest.raises(ValueError, match="both 0"):
        K.coca_loss(model, b["image"], b["input_ids"], b["attention_mask"], 0.0, 0.0)
    with pytest.raises(ValueError, match="caption_weight must be a number >= 0"):
        K.coca_loss(model, b["image"], b["input_ids"], b["attention_mask"], 1.0, -1.0)


def test_generation_with_the_coca_decoder_cache_equals_no_cache(tokenizer):
    model = tiny_model(len(tokenizer), uni=2, multi=2).eval()
    b = pairs(tokenizer)
    memory = model.image_memory(b["image"])
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    cached = generate(model.decoder, memory, bos_id=bos, eos_id=None, pad_id=pad, max_new_tokens=10)
    # greedy without a cache: the whole sequence through both stacks at every step
    seq = torch.full((8, 1), bos)
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat([seq, model.decoder(seq, context=memory).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, seq[:, 1:])
    # the cached logits of the last step equal the full forward's
    with torch.no_grad():
        first = model.decoder(seq[:, :5], context=memory, use_cache=True)
        step = model.decoder(seq[:, 5:6], past_key_values=first.past_key_values, use_cache=True)
        full = model.decoder(seq[:, :6], context=memory)
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], rtol=1e-4, atol=1e-5)
    # beam search and the lesson-05 report writer run on it
    texts = K.generate_reports(model, b["image"], tokenizer, "beam", num_beams=3, max_new_tokens=6)
    assert len(texts) == 8 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="prefix_embeds"):
        model.decoder(seq[:, :2], context=memory, prefix_embeds=torch.zeros(8, 1, 32))


def test_a_tiny_run_lowers_both_losses(tokenizer):
    model = tiny_model(len(tokenizer), dim=48)
    b = pairs(tokenizer)
    history = fit(model, K.coca_step, TensorDictDataset(**b), steps=80, batch_size=8, lr=3e-3, warmup_steps=5,
                  progress=False, device="cpu", seed=0)
    for name in ("contrastive_loss", "caption_loss"):
        values = history.metrics[name]
        assert np.mean(values[-5:]) < 0.5 * np.mean(values[:3]), (name, values[:3], values[-5:])
    np.testing.assert_allclose(history.loss, np.array(history.metrics["contrastive_loss"])
                               + 2 * np.array(history.metrics["caption_loss"]), rtol=1e-5)


def test_an_ablation_arm_freezes_what_it_does_not_use(tokenizer):
    model = K.freeze_unused(tiny_model(len(tokenizer)), contrastive_weight=1.0, caption_weight=0.0)
    assert not any(p.requires_grad for p in model.decoder.multimodal.parameters())
    assert model.decoder.token_embed.weight.requires_grad and model.decoder.cls_token.requires_grad
    model = K.freeze_unused(tiny_model(len(tokenizer)), contrastive_weight=0.0, caption_weight=2.0)
    assert not model.decoder.cls_token.requires_grad and not model.logit_scale.log_scale.requires_grad
    assert not any(p.requires_grad for p in model.image_projection.parameters())
    assert all(p.requires_grad for p in model.decoder.multimodal.parameters())


def test_bad_input_is_rejected_clearly(tokenizer):
    with pytest.raises(ValueError, match="unimodal_depth must be a positive int"):
        K.CoCaDecoder(100, 32, 2, 16, unimodal_depth=0, multimodal_depth=1)
    decoder = K.CoCaDecoder(100, 32, 2, 16, unimodal_depth=1, multimodal_depth=1)
    with pytest.raises(ValueError, match="local_dim"):
        K.CoCaModel(ViT(image_size=16, patch_size=8, in_chans=1, dim=48, depth=1, heads=2), decoder, 32)
    with pytest.raises(ValueError, match="context"):
        decoder(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decoder.encode_text(torch.full((2, 3), 500))
    model = tiny_model(len(tokenizer))
    with pytest.raises(KeyError, match="input_ids"):
        K.coca_step(model, {"image": torch.rand(2, 1, 16, 16)})


# --------------------------------------------------------------------------- the cached recipe
def tiny_profile(**changes):
    sizes = dict(n_studies=120, image_size=32, patch_size=8, dim=16, depth=1, heads=2, vocab_size=120,
                 max_text_len=48, batch_size=16, steps=4, probe_steps=5, lr=1e-3)
    return medmm_lite.profile("smoke").with_(**{**sizes, **changes})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    import os

    from medmm_lite.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("medmm")
    old = os.environ.get("MEDMM_DATA")
    os.environ["MEDMM_DATA"] = str(root)
    try:
        P = tiny_profile()
        yield P, prepare_data(P, seed=0)
    finally:
        if old is None:
            os.environ.pop("MEDMM_DATA")
        else:
            os.environ["MEDMM_DATA"] = old


def test_pretrain_coca_trains_once_then_loads_the_same_weights(tiny_data):
    from medmm_lite.pretrain.registry import OBJECTIVES, get_objective

    P, data = tiny_data
    model, info = K.pretrain_coca(P, data, seed=0, progress=False)
    history = info["history"]
    assert not info["cached"] and len(history) == P.steps and not model.training
    assert {"contrastive_loss", "caption_loss", "temperature"} <= set(history.metrics)
    assert {"val_caption", "val_contrastive"} <= set(history.evals[-1][1])
    assert isinstance(model.image_encoder, ViT)
    again, info2 = K.pretrain_coca(P, data, seed=0, progress=False)
    assert info2["cached"]
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    alone, info3 = K.pretrain_coca(P, data, seed=0, caption_weight=0.0, progress=False)
    assert not info3["cached"] and "caption_loss" not in info3["history"].metrics
    # the weight-0 arm never touched the multimodal blocks: they are still the initial ones
    initial = K.build_coca(P, len(data.tokenizer), seed=0, max_len=int(data.input_ids.shape[1]))
    for (name, a), b in zip(alone.decoder.multimodal.state_dict().items(),
                            initial.decoder.multimodal.state_dict().values()):
        assert torch.equal(a, b), name
    # the registry runs it with the command line's convention
    assert "coca" in OBJECTIVES and get_objective("coca").load() is K.pretrain_coca
    assert {"contrastive_weight", "caption_weight", "text"} <= set(get_objective("coca").options())
    texts = K.generate_reports(again, data.cohort.images[:3], data.tokenizer, "greedy", max_new_tokens=5)
    assert len(texts) == 3
    encode = K.text_embedder(again, data.tokenizer)
    assert encode(["No pleural effusion.", "Pneumothorax."]).shape == (2, P.dim)


def test_coca_can_start_its_image_side_from_clip(tiny_data):
    """image_init="clip": the ViT and the image projection head start as lesson 02's CLIP left them
    (and then train); the text side starts from the same seed as from scratch; another cache entry."""
    from medmm_lite.pretrain.clip import pretrain_clip

    P, data = tiny_data
    clip_model, _ = pretrain_clip(P, data, seed=0, progress=False)
    vocab, max_len = len(data.tokenizer), int(data.input_ids.shape[1])
    started = K.start_from_clip(K.build_coca(P, vocab, seed=0, max_len=max_len), clip_model)
    for (name, a), b in zip(clip_model.image_encoder.state_dict().items(),
                            started.image_encoder.state_dict().values()):
        assert torch.equal(a, b), name
    scratch = K.build_coca(P, vocab, seed=0, max_len=max_len)
    for (name, a), b in zip(scratch.decoder.state_dict().items(), started.decoder.state_dict().values()):
        assert torch.equal(a, b), name
    model, info = K.pretrain_coca(P, data, seed=0, image_init="clip", progress=False)
    _, from_scratch = K.pretrain_coca(P, data, seed=0, progress=False)
    assert not info["cached"] and info["path"] != from_scratch["path"]
    assert any(not torch.equal(a, b) for a, b in zip(model.image_encoder.parameters(),
                                                      clip_model.image_encoder.parameters()))   # it trained
    with pytest.raises(ValueError, match="image_init"):
        K.pretrain_coca(P, data, seed=0, image_init="imagenet", progress=False)
