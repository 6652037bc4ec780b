"""Zero-shot classification (medmm_lite.adapt.zero_shot) on hand-made embeddings, where the
right answer is known."""
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medmm_lite.adapt import FINDING_PROMPTS, pathology_auroc, prompt_embeddings, zero_shot_classify
from medmm_lite.data.findings import PATHOLOGIES


def concept_space(n=200, seed=0):
    """Labels (n, 9) and image embeddings built from one 'present' and one 'absent' direction
    per finding: a perfect image-text space."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, len(PATHOLOGIES), generator=g) < 0.3).float()
    labels[0], labels[1] = 1, 0  # every finding has positives and negatives
    basis = torch.linalg.qr(torch.randn(2 * len(PATHOLOGIES), 2 * len(PATHOLOGIES), generator=g))[0]
    present, absent = basis[: len(PATHOLOGIES)], basis[len(PATHOLOGIES):]
    images = labels @ present + (1 - labels) @ absent
    return labels, images, present, absent


def test_perfect_embeddings_give_auroc_one():
    labels, images, present, absent = concept_space()
    scores = zero_shot_classify(images, present, absent)
    assert scores.shape == labels.shape
    assert ((scores > 0.5) == labels.bool()).all()
    result = pathology_auroc(labels, scores)
    assert result["macro"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in result["per_finding"].values())


def test_swapped_prompts_give_auroc_zero_and_noise_gives_chance():
    labels, images, present, absent = concept_space()
    assert pathology_auroc(labels, zero_shot_classify(images, absent, present))["macro"] == pytest.approx(0.0)
    g = torch.Generator().manual_seed(1)
    random_images = torch.randn(images.shape, generator=g)
    macro = pathology_auroc(labels, zero_shot_classify(random_images, present, absent))["macro"]
    assert 0.35 < macro < 0.65


def test_score_is_the_softmax_of_the_two_similarities():
    g = torch.Generator().manual_seed(2)
    img, pos, neg = torch.randn(7, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    t = 0.2
    sims = torch.stack([F.normalize(img, dim=-1) @ F.normalize(pos, dim=-1).T,
                        F.normalize(img, dim=-1) @ F.normalize(neg, dim=-1).T], -1)
    expected = torch.softmax(sims / t, -1)[..., 0]
    assert torch.allclose(zero_shot_classify(img, pos, neg, temperature=t), expected, atol=1e-6)
    # the temperature calibrates but does not reorder: the same AUROC (at temperatures where
    # float32 sigmoids do not saturate to exactly 1, which would create ties)
    labels = (torch.rand(7, 3, generator=g) < 0.5).float()
    labels[0], labels[1] = 1, 0
    for k in range(3):
        a = roc_auc_score(labels[:, k], zero_shot_classify(img, pos, neg, temperature=0.5)[:, k])
        b = roc_auc_score(labels[:, k], zero_shot_classify(img, pos, neg, temperature=5.0)[:, k])
        assert a == pytest.approx(b)


def test_prompt_embeddings_average_normalised_phrasings():
    table = {}

    def encode_text(texts):  # a fixed random vector per phrasing, at random lengths
        out = []
        for t in texts:
            if t not in table:
                g = torch.Generator().manual_seed(len(table))
                table[t] = torch.randn(6, generator=g) * (1 + len(table))
            out.append(table[t])
        return torch.stack(out)

    pos, neg = prompt_embeddings(encode_text)
    assert pos.shape == neg.shape == (len(PATHOLOGIES), 6)
    k = PATHOLOGIES.index("Pleural Effusion")
    positives = FINDING_PROMPTS["Pleural Effusion"][0]
    expected = torch.stack([F.normalize(table[t], dim=0) for t in positives]).mean(0)
    assert torch.allclose(pos[k], expected, atol=1e-6)
    single_pos, _ = prompt_embeddings(encode_text, ensemble=False)
    assert torch.allclose(single_pos[k], F.normalize(table[positives[0]], dim=0), atol=1e-6)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="no prompts"):
        prompt_embeddings(lambda texts: torch.zeros(len(texts), 4), findings=["Unicorn"])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        zero_shot_classify(torch.zeros(4), torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="dims"):
        zero_shot_classify(torch.zeros(3, 5), torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(F, D\)"):
        zero_shot_classify(torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(3, 4))


def test_report_prompt_embeddings_average_the_texts_of_reports_that_state_the_finding():
    from medmm_lite.adapt import report_prompt_embeddings

    vocabulary = {"effusion.": 0, "no acute process.": 1, "cardiomegaly.": 2}
    calls = []

    def encode_text(texts):
        calls.append(list(texts))
        out = torch.zeros(len(texts), 4)
        for i, t in enumerate(texts):
            out[i, vocabulary[t]] = 2.0 + i          # unnormalised on purpose
        return out

    texts = ["effusion.", "no acute process.", "effusion.", "cardiomegaly."]
    reports = ["FINDINGS: Small left pleural effusion. IMPRESSION: Effusion.",
               "FINDINGS: No pleural effusion. IMPRESSION: No acute process.",
               "FINDINGS: Large right pleural effusion. IMPRESSION: Effusion.",
               "FINDINGS: The heart is enlarged. No pleural effusion. IMPRESSION: Cardiomegaly."]
    pos, neg = report_prompt_embeddings(encode_text, texts, reports, findings=["Pleural Effusion", "Cardiomegaly"])
    assert calls == [sorted(set(texts))], "each distinct text is embedded once"
    e = torch.eye(4)
    torch.testing.assert_close(pos[0], e[0])                       # both effusion reports say "effusion."
    torch.testing.assert_close(neg[0], (e[1] + e[2]) / 2)
    torch.testing.assert_close(pos[1], e[2])
    torch.testing.assert_close(neg[1], (e[0] + e[1] + e[0]) / 3)
    with pytest.raises(ValueError, match="Pneumothorax: the labeler finds it in 0 of 4"):
        report_prompt_embeddings(encode_text, texts, reports, findings=["Pneumothorax"])
    with pytest.raises(ValueError, match="one text per report"):
        report_prompt_embeddings(encode_text, texts[:2], reports)
