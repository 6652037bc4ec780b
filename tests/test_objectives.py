import math

import pytest
import torch
import torch.nn.functional as F

from medmm_lite.objectives import LogitScale, clip_loss, convirt_loss, nt_xent_loss


def test_clip_loss_hand_computed_two_pairs():
    # Orthogonal unit features: matching pairs have cosine 1, the others 0.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # scale does not matter: normalised inside
    s = 2.0
    expected = -math.log(math.exp(s) / (math.exp(s) + 1.0))
    assert clip_loss(img, txt, s).item() == pytest.approx(expected, rel=1e-6)


def test_clip_loss_matches_open_clip():
    open_clip = pytest.importorskip("open_clip")
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    scale = torch.tensor(1 / 0.07)
    ref = open_clip.loss.ClipLoss()(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), scale)
    assert clip_loss(img, txt, scale).item() == pytest.approx(ref.item(), rel=1e-6)


def test_convirt_weighting_is_asymmetric():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    logits = 10 * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    t = torch.arange(8)
    i2t, t2i = F.cross_entropy(logits, t), F.cross_entropy(logits.t(), t)
    assert convirt_loss(img, txt, 0.1, 0.75).item() == pytest.approx((0.75 * i2t + 0.25 * t2i).item(), rel=1e-6)


def test_nt_xent_matches_a_plain_loop():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    z = F.normalize(torch.cat([a, b]), dim=-1)
    n, tau, total = 5, 0.2, 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        sims = [(z[i] @ z[j]) / tau for j in range(2 * n) if j != i]
        pos = (z[i] @ z[positive]) / tau
        total += -(pos - torch.logsumexp(torch.stack(sims), 0))
    assert nt_xent_loss(a, b, tau).item() == pytest.approx((total / (2 * n)).item(), rel=1e-5)


def test_logit_scale_starts_at_clip_value_and_clamps():
    scale = LogitScale()
    assert scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert scale().item() == pytest.approx(100.0, rel=1e-6)


@pytest.mark.parametrize("shapes", [((4, 8), (5, 8)), ((4, 8), (4, 6)), ((1, 8), (1, 8)), ((8,), (8,))])
def test_bad_shapes_are_named(shapes):
    with pytest.raises(ValueError, match="features|pairs"):
        clip_loss(torch.randn(*shapes[0]), torch.randn(*shapes[1]), 10.0)
