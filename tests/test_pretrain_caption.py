"""Image -> report captioning (medmm_lite.pretrain.caption) and report scoring
(medmm_lite.eval.reports): shapes, the teacher-forcing loss, causality, overfitting a few
pairs, decoding strategies, caching, hallucination counts, and clear errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medmm_lite
from medmm_lite.data.tensors import TensorDictDataset
from medmm_lite.data.tokenizer import encode_for_decoder, train_tokenizer
from medmm_lite.eval import bleu, clinical_f1, hallucinations, report_metrics, rouge_l
from medmm_lite.models import CNNEncoder, TextDecoder, ViT, count_parameters
from medmm_lite.pretrain import caption as C
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


def tiny_model(vocab_size, seed=0, projection="linear", dim=32, depth=1, encoder="vit"):
    torch.manual_seed(seed)
    if encoder == "vit":
        images = ViT(image_size=16, patch_size=8, in_chans=1, dim=dim, depth=depth, heads=2, pool="mean")
    else:   # a 4 x 4 grid of 32-wide region features
        images = CNNEncoder(widths=(16, dim), stem_stride=2, image_size=16)
    decoder = TextDecoder(vocab_size, dim=dim, depth=depth, heads=2, max_len=MAX_LEN, cross_attention=True,
                          context_dim=dim if projection == "none" else None)
    return C.CaptionModel(images, decoder, projection=projection)


def pairs(tokenizer, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, mask = encode_for_decoder(tokenizer, REPORTS[:n], MAX_LEN)
    return {"image": torch.rand(n, 1, 16, 16, generator=g), "input_ids": ids, "attention_mask": mask}


# --------------------------------------------------------------------------- texts
def test_report_section_picks_the_findings_the_impression_or_everything():
    report = "FINDINGS: Small left effusion. No pneumothorax. IMPRESSION: Left effusion."
    assert C.report_section(report) == "Small left effusion. No pneumothorax."
    assert C.report_section(report, "impression") == "Left effusion."
    assert C.report_section(report, "report") == report
    assert C.report_section("IMPRESSION: No acute process.", "findings") == "No acute process."  # no findings
    assert C.report_section("Heart size is normal.", "findings") == "Heart size is normal."       # no headers
    assert C.report_section("Heart size is normal.", "impression") == "Heart size is normal."
    with pytest.raises(ValueError, match="text must be one of"):
        C.report_section(report, "abstract")
    with pytest.raises(TypeError, match="must be a string"):
        C.report_section(None)


def test_length_buckets_group_similar_lengths_with_a_full_batch_each():
    lengths = np.array([5, 40, 6, 38, 7, 39, 8, 41, 9, 37, 10, 36])
    buckets = C.length_buckets(lengths, batch_size=4)
    assert sorted(np.bincount(buckets)) == [4, 4, 4]
    assert lengths[buckets == 0].max() < lengths[buckets == 2].min()
    assert set(C.length_buckets(lengths, batch_size=4, max_buckets=2)) == {0, 1}
    assert set(C.length_buckets(lengths, batch_size=100)) == {0}


# --------------------------------------------------------------------------- the model and its loss
@pytest.mark.parametrize("encoder, regions", [("vit", 4), ("cnn", 16)])
@pytest.mark.parametrize("projection", ["linear", "none"])
def test_shapes(tokenizer, projection, encoder, regions):
    model = tiny_model(len(tokenizer), projection=projection, encoder=encoder).eval()
    b = pairs(tokenizer)
    memory = model.encode_image(b["image"])
    assert memory.shape == (8, regions, 32)                 # ViT: 16 px / patch 8 = 2 x 2; CNN: stride 4 = 4 x 4
    logits = model(b["image"], b["input_ids"])
    assert logits.shape == (8, MAX_LEN, len(tokenizer))
    torch.testing.assert_close(model(None, b["input_ids"], memory=memory), logits)


def test_caption_step_is_the_shifted_cross_entropy_and_ignores_padding(tokenizer):
    model = tiny_model(len(tokenizer)).eval()
    b = pairs(tokenizer)
    loss, logs = C.caption_step(model, b)
    # by hand: every real token after [BOS] is a target, predicted from the position before it
    logits = model(b["image"], b["input_ids"])
    terms = [F.cross_entropy(logits[i, t - 1], b["input_ids"][i, t])
             for i in range(8) for t in range(1, int(b["attention_mask"][i].sum()))]
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert 0 <= float(logs["token_accuracy"]) <= 1
    # what sits in the padding positions changes nothing, nor does extra padding
    noisy = dict(b, input_ids=b["input_ids"].masked_fill(b["attention_mask"] == 0, 9))
    torch.testing.assert_close(C.caption_step(model, noisy)[0], loss)
    longer = dict(b, input_ids=F.pad(b["input_ids"], (0, 4)), attention_mask=F.pad(b["attention_mask"], (0, 4)))
    torch.testing.assert_close(C.caption_step(model, longer)[0], loss)
    targets = C.shift_targets(b["input_ids"], b["attention_mask"])
    assert (targets == C.IGNORE_INDEX).sum() == (b["attention_mask"][:, 1:] == 0).sum()


def test_teacher_forcing_is_causal(tokenizer):
    model = tiny_model(len(tokenizer)).eval()
    b = pairs(tokenizer)
    ids = b["input_ids"].clone()
    with torch.no_grad():
        before = model(b["image"], ids)
        ids[:, 6] = (ids[:, 6] + 11) % len(tokenizer)
        after = model(b["image"], ids)
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_memory_is_the_projected_regions_plus_a_learned_position_per_region(tokenizer):
    model = tiny_model(len(tokenizer), encoder="cnn").eval()
    images = pairs(tokenizer)["image"]
    with torch.no_grad():
        features = model.projection(model.image_encoder(images).local_features)
        memory = model.encode_image(images)
    torch.testing.assert_close(memory, features + model.memory_pos)
    assert model.memory_pos.shape == (1, 16, 32) and model.memory_pos.requires_grad
    assert not torch.allclose(model.memory_pos[0, 0], model.memory_pos[0, 5])   # regions are told apart


def test_the_image_reaches_every_position(tokenizer):
    model = tiny_model(len(tokenizer)).eval()
    b = pairs(tokenizer)
    with torch.no_grad():
        a = model(b["image"], b["input_ids"])
        other = model(b["image"].flip(0), b["input_ids"])
    assert (a - other).abs().amax(dim=(0, 2)).min() > 0


# --------------------------------------------------------------------------- learning and decoding
@pytest.fixture(scope="module")
def overfit(tokenizer):
    model = tiny_model(len(tokenizer), dim=48)
    b = pairs(tokenizer)
    history = fit(model, C.caption_step, TensorDictDataset(**b), steps=150, batch_size=8, lr=3e-3,
                  warmup_steps=10, progress=False, device="cpu", seed=0)
    return model.eval(), b, history


def test_a_tiny_model_overfits_eight_pairs_and_greedy_writes_them_back(tokenizer, overfit):
    model, b, history = overfit
    assert np.mean(history.loss[-10:]) < 0.1 * np.mean(history.loss[:5])
    texts = C.generate_reports(model, b["image"], tokenizer, "greedy")
    assert texts == [r.lower() for r in REPORTS]


def test_decoding_strategies_run_and_repeat_for_a_seed(tokenizer, overfit):
    model, b, _ = overfit
    greedy = C.generate_reports(model, b["image"], tokenizer, "greedy")
    beam = C.generate_reports(model, b["image"], tokenizer, "beam", num_beams=3)
    assert beam == greedy                                  # a model this sure has one answer
    sample = dict(strategy="sample", temperature=2.0, top_p=0.95)
    first = C.generate_reports(model, b["image"], tokenizer, seed=1, **sample)
    assert first == C.generate_reports(model, b["image"], tokenizer, seed=1, **sample)
    assert first != C.generate_reports(model, b["image"], tokenizer, seed=2, **sample)
    texts, ids = C.generate_reports(model, b["image"], tokenizer, "greedy", max_new_tokens=3, return_ids=True)
    assert all(len(t) <= 3 for t in ids) and len(texts) == 8
    # batching does not change greedy output
    assert C.generate_reports(model, b["image"], tokenizer, batch_size=3) == greedy


# --------------------------------------------------------------------------- cached pretraining
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


def test_pretrain_caption_trains_once_then_loads_the_same_weights(tiny_data):
    P, data = tiny_data
    model, info = C.pretrain_caption(P, data, seed=0, progress=False)
    assert not info["cached"] and len(info["history"]) == P.steps and not model.training
    assert [name for name, _ in info["history"].evals[-1:]] == [P.steps]
    assert "val_loss" in info["history"].evals[-1][1]
    again, info2 = C.pretrain_caption(P, data, seed=0, progress=False)
    assert info2["cached"]
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    _, info3 = C.pretrain_caption(P, data, seed=0, text="impression", progress=False)
    assert not info3["cached"]
    vit, info4 = C.pretrain_caption(P, data, seed=0, encoder="vit", progress=False)
    assert not info4["cached"] and isinstance(vit.image_encoder, ViT)
    assert isinstance(model.image_encoder, CNNEncoder) and model.image_encoder.dim == model.image_encoder.local_dim
    texts = C.generate_reports(again, data.cohort.images[:3], data.tokenizer, max_new_tokens=5)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_a_captioner_on_clips_encoder_trains_only_the_decoder_side(tiny_data):
    """encoder="clip": lesson 02's image tower, frozen. Its weights and its BatchNorm statistics
    come out of training exactly as CLIP left them; the projection and the decoder learn."""
    from medmm_lite.models.frozen import FrozenEncoder
    from medmm_lite.pretrain.clip import pretrain_clip

    P, data = tiny_data
    clip_model, _ = pretrain_clip(P, data, seed=0, progress=False)
    model, info = C.pretrain_caption(P, data, seed=0, encoder="clip", progress=False)
    assert not info["cached"] and isinstance(model.image_encoder, FrozenEncoder)
    for (name, a), b in zip(clip_model.image_encoder.state_dict().items(),
                            model.image_encoder.module.state_dict().values()):
        assert torch.equal(a, b), name                       # BatchNorm running stats included
    untrained = C.build_caption(P, len(data.tokenizer), seed=0, encoder="clip",
                                pretrained=clip_model.image_encoder, max_len=int(data.input_ids.shape[1]))
    assert not torch.equal(untrained.projection.weight, model.projection.weight)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - count_parameters(
        model.image_encoder)
    model.train()
    assert not model.image_encoder.module.training
    with pytest.raises(ValueError, match="pretrained"):
        C.build_caption(P, len(data.tokenizer), encoder="clip")
    with pytest.raises(ValueError, match="pretrained"):
        C.build_caption(P, len(data.tokenizer), encoder="cnn", pretrained=clip_model.image_encoder)


# --------------------------------------------------------------------------- scoring reports
def test_hallucinations_count_stated_findings_the_image_lacks():
    from medmm_lite.data.findings import FINDINGS

    def labels(*present):
        row = np.zeros(len(FINDINGS), np.float32)
        for name in present:
            row[FINDINGS.index(name)] = 1
        return row

    generated = ["Small left pleural effusion. No pneumothorax.",        # effusion: the image has it
                 "Large right pneumothorax. Possible consolidation.",    # both absent: 2 (one hedged)
                 "No pleural effusion. Heart size is normal.",          # states nothing
                 "Cardiomegaly."]                                        # absent: 1
    y = np.stack([labels("Pleural Effusion"), labels(), labels("Edema"), labels("Edema")])
    out = hallucinations(generated, y)
    assert out["per_report"].tolist() == [0, 2, 0, 1]
    assert out["total"] == 3 and out["per_report_mean"] == pytest.approx(0.75)
    assert out["per_finding"]["Pneumothorax"] == 1 and out["per_finding"]["Consolidation"] == 1
    assert out["per_finding"]["Cardiomegaly"] == 1 and out["per_finding"]["Pleural Effusion"] == 0
    assert out["absent"]["Pleural Effusion"] == 3 and out["absent"]["Edema"] == 2
    assert out["matrix"].shape == (4, 9)
    strict = hallucinations(generated, torch.from_numpy(y), uncertain_as=0)   # a hedge is not a claim
    assert strict["per_report"].tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="one row per generated report"):
        hallucinations(generated, y[:3])
    with pytest.raises(ValueError, match="0 \\(absent\\) or 1"):
        hallucinations(generated, y * 2)
    with pytest.raises(TypeError, match="list of report strings"):
        hallucinations("Cardiomegaly.", y[:1])


def test_report_metrics_and_a_negation_that_only_the_clinical_metric_sees():
    refs = ["Small left pleural effusion. No pneumothorax. Heart size is normal."]
    negated = ["No left pleural effusion. No pneumothorax. Heart size is normal."]
    same = report_metrics(refs, refs)
    assert same == {"bleu4": pytest.approx(1.0), "rouge_l": pytest.approx(1.0),
                    "clinical_f1_micro": pytest.approx(1.0), "clinical_f1_macro": pytest.approx(1.0)}
    out = report_metrics(refs, negated)
    assert out["bleu4"] == pytest.approx(bleu(refs, negated)) and out["bleu4"] > 0.7
    assert out["rouge_l"] == pytest.approx(rouge_l(refs, negated)) and out["rouge_l"] > 0.85
    assert out["clinical_f1_micro"] == pytest.approx(clinical_f1(refs, negated)["micro_f1"]) == 0.0


# --------------------------------------------------------------------------- errors
def test_bad_input_is_a_clear_error(tokenizer):
    vit = ViT(image_size=16, patch_size=8, dim=32, depth=1, heads=2)
    with pytest.raises(ValueError, match="cross_attention=True"):
        C.CaptionModel(vit, TextDecoder(len(tokenizer), dim=32, depth=1, heads=2, max_len=MAX_LEN))
    decoder = TextDecoder(len(tokenizer), dim=24, depth=1, heads=2, max_len=MAX_LEN, cross_attention=True)
    with pytest.raises(ValueError, match="projection='none' needs"):
        C.CaptionModel(vit, decoder, projection="none")
    with pytest.raises(ValueError, match="projection must be one of"):
        C.CaptionModel(vit, decoder, projection="mlp")
    model = tiny_model(len(tokenizer))
    b = pairs(tokenizer)
    with pytest.raises(KeyError, match="attention_mask"):
        C.caption_step(model, {"image": b["image"], "input_ids": b["input_ids"]})
    with pytest.raises(ValueError, match="pair up"):
        C.caption_step(model, dict(b, image=b["image"][:4]))
    with pytest.raises(ValueError, match="one shape"):
        C.caption_step(model, dict(b, attention_mask=b["attention_mask"][:, :5]))
    with pytest.raises(ValueError, match="no next token"):
        C.caption_step(model, dict(b, attention_mask=torch.zeros_like(b["attention_mask"])))
    with pytest.raises(ValueError, match="strategy must be one of"):
        C.generate_reports(model, b["image"], tokenizer, "nucleus")
    with pytest.raises(ValueError, match="only apply to strategy='sample'"):
        C.generate_reports(model, b["image"], tokenizer, "greedy", temperature=0.5)
    with pytest.raises(ValueError, match="\\(N, C, H, W\\)"):
        C.generate_reports(model, b["image"][0], tokenizer)
    with pytest.raises(ValueError, match="vocab_size must be"):
        C.build_caption(tiny_profile(), vocab_size="120")
    with pytest.raises(ValueError, match="encoder must be one of"):
        C.build_caption(tiny_profile(), vocab_size=120, encoder="resnet")
    with pytest.raises(ValueError, match="fixed .grid_size"):
        C.CaptionModel(CNNEncoder(widths=(8, 16)), decoder)
