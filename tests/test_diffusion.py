"""Lesson 06's generative image library: DDPM forward process, noise-prediction loss, classifier-free
guidance, DDIM / ancestral sampling, the conditional U-Net, MRI translation (L1 and pix2pix), recipes."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmm_lite.eval import psnr, ssim
from medmm_lite.generative import (PIX2PIX_L1_WEIGHT, ConditionalDenoiser, NoiseSchedule, PatchDiscriminator, Pix2Pix,
                                   TranslationUNet, UNet, build_denoiser, build_translation, diffusion_loss,
                                   drop_condition, findings_from_reports, guided_eps, identity_baseline,
                                   pix2pix_discriminator_loss, pix2pix_generator_loss, q_sample, q_step, sample,
                                   timestep_embedding, train_ddpm, train_translation, translation_loss)
from medmm_lite.generative.diffusion import ddim_step, predict_x0, resize_images, sampling_timesteps


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _randomize(module: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Every parameter random (the zero-initialised output convolutions and null embedding included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


class Oracle(nn.Module):
    """A denoiser that knows x0: it returns exactly the noise that turns x0 into x_t."""

    def __init__(self, schedule, x0):
        super().__init__()
        self.schedule, self.x0 = schedule, x0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, cond=None):
        abar = self.schedule.gather(self.schedule.alphas_cumprod, t, x_t)
        return (x_t - abar.sqrt() * self.x0) / (1 - abar).sqrt()


# --------------------------------------------------------------------------- schedule and forward process
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_is_a_valid_noising_process(kind):
    s = NoiseSchedule(1000, kind)
    assert s.betas.shape == (1000,) and bool((s.betas > 0).all()) and bool((s.betas < 1).all())
    abar = s.alphas_cumprod
    assert torch.allclose(abar, torch.cumprod(1 - s.betas, 0))
    assert bool((abar[1:] < abar[:-1]).all())                  # monotone: more noise at every step
    assert abar[0] > 0.99 and abar[-1] < 1e-3                  # starts near clean, ends near pure noise
    assert s.alphas_cumprod_prev[0] == 1 and torch.equal(s.alphas_cumprod_prev[1:], abar[:-1])
    if kind == "linear":
        assert math.isclose(float(s.betas[0]), 1e-4) and math.isclose(float(s.betas[-1]), 0.02)
    else:  # the cosine schedule's abar follows cos^2 closely (before the 0.999 clip at the very end)
        t = torch.arange(1, 1001, dtype=torch.float64) / 1000
        f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
        assert torch.allclose(abar[:900], f[:900], rtol=1e-9)


def test_q_sample_is_the_closed_form_exactly():
    s = NoiseSchedule(100, "linear")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(5, 1, 8, 8, generator=g) * 2 - 1, torch.randn(5, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 50, 98, 99])
    abar = s.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    assert torch.allclose(q_sample(s, x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise, atol=1e-7)
    # and predict_x0 inverts it given the noise
    assert torch.allclose(predict_x0(s, q_sample(s, x0, t, noise), t, noise), x0, atol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_step_by_step_forward_chain_matches_the_closed_form(kind):
    """Iterate q(x_t | x_{t-1}) from a fixed x0 with fresh noise every step; over many samples,
    x_t has mean sqrt(abar_t) x0 and variance 1 - abar_t."""
    s = NoiseSchedule(200, kind)
    g = torch.Generator().manual_seed(1)
    n = 40_000
    x0 = torch.tensor([-0.8, 0.0, 0.5, 1.0], dtype=torch.float64).view(1, 4, 1, 1).expand(n, 4, 1, 1)
    x = x0.clone()
    for t in range(200):
        x = q_step(s, x, torch.full((n,), t), torch.randn(x.shape, generator=g, dtype=torch.float64))
        if t in (0, 20, 100, 199):
            abar = float(s.alphas_cumprod[t])
            mean, var = x.mean(0).flatten(), x.var(0).flatten()
            expected = math.sqrt(abar) * x0[0].flatten()
            se = math.sqrt((1 - abar) / n)
            assert torch.allclose(mean, expected, atol=5 * se + 1e-12), (t, mean, expected)
            assert torch.allclose(var, torch.full_like(var, 1 - abar), rtol=0.05, atol=1e-6), (t, var, 1 - abar)


def test_forward_process_rejects_bad_input():
    s = NoiseSchedule(50)
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"t must be in \[0, 50\)"):
        q_sample(s, x, torch.tensor([0, 50]), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"t must be in"):
        q_sample(s, x, torch.tensor([-1, 3]), torch.zeros_like(x))
    with pytest.raises(ValueError, match="integer steps"):
        q_sample(s, x, torch.tensor([0.5, 1.0]), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        q_sample(s, x, torch.tensor([1, 2, 3]), torch.zeros_like(x))
    with pytest.raises(ValueError, match="noise must have the shape"):
        q_sample(s, x, torch.tensor([1, 2]), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="images"):
        q_sample(s, torch.zeros(8, 8), torch.tensor([1]), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule(100, "quadratic")
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule(1)


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("steps,eta", [(1, 0.0), (10, 0.0), (50, 0.0), (10, 1.0)])
def test_a_denoiser_that_returns_the_true_noise_reconstructs_exactly(kind, steps, eta):
    s = NoiseSchedule(1000, kind)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 1, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    for start in range(3):   # from any x_T
        x_T = torch.randn(4, 1, 16, 16, generator=g, dtype=torch.float64) * (1 + start)
        out = sample(Oracle(s, x0), s, x_T=x_T, steps=steps, eta=eta, generator=g)
        assert out.dtype == torch.float64
        assert torch.allclose(out, x0, atol=1e-9), (out - x0).abs().max()


def test_ancestral_step_is_the_ddpm_posterior():
    """eta=1 between consecutive steps draws from q(x_{t-1} | x_t, x0): DDPM's mean and variance."""
    s = NoiseSchedule(1000, "linear")
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    for t in (1, 300, 999):
        tt = torch.full((3,), t)
        eps = Oracle(s, x0)(x_t, tt)
        x_prev, x0_hat = ddim_step(s, x_t, t, t - 1, eps, eta=1.0, clip_denoised=False,
                                   generator=torch.Generator().manual_seed(9))
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        beta, abar, abar_prev = float(s.betas[t]), float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t - 1])
        mean = ((beta * math.sqrt(abar_prev) / (1 - abar)) * x0
                + ((1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)) * x_t)
        var = beta * (1 - abar_prev) / (1 - abar)
        assert torch.allclose(x0_hat, x0, atol=1e-9)
        assert torch.allclose(x_prev, mean + math.sqrt(var) * z, atol=1e-9)


def test_sampling_timesteps_and_determinism():
    assert sampling_timesteps(1000, 5) == [999, 749, 500, 250, 0]
    assert sampling_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        sampling_timesteps(100, 0)
    with pytest.raises(ValueError, match="steps"):
        sampling_timesteps(100, 101)
    s = NoiseSchedule(100)
    model = _randomize(build_denoiser(16, base_channels=8, channel_mults=(1, 2)), std=0.05)
    cond = torch.zeros(3, 10)
    a = sample(model, s, (3, 1, 16, 16), cond, steps=4, guidance=2.0, generator=torch.Generator().manual_seed(0))
    b = sample(model, s, (3, 1, 16, 16), cond, steps=4, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 1, 16, 16) and torch.equal(a, b) and float(a.abs().max()) <= 1.0


def test_guidance_interpolates_between_unconditional_and_conditional():
    model = _randomize(build_denoiser(16, base_channels=8, channel_mults=(1, 2)), std=0.1).eval()
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(3, 1, 16, 16, generator=g), torch.tensor([5, 500, 900])
    cond = torch.tensor([[1.0] + [0] * 9, [0, 1.0] + [0] * 8, [0] * 9 + [1.0]])
    with torch.no_grad():
        uncond, condl = model(x, t, None), model(x, t, cond)
        assert not torch.allclose(uncond, condl)
        assert torch.equal(guided_eps(model, x, t, cond, 0.0), uncond)
        assert torch.equal(guided_eps(model, x, t, cond, 1), condl)
        assert torch.allclose(guided_eps(model, x, t, cond, 3.0), uncond + 3.0 * (condl - uncond), atol=1e-5)
        assert torch.allclose(guided_eps(model, x, t, cond, 0.5), 0.5 * (uncond + condl), atol=1e-5)
    for bad in (-0.5, float("nan"), float("inf"), "2", True):
        with pytest.raises(ValueError, match="guidance"):
            guided_eps(model, x, t, cond, bad)
        with pytest.raises(ValueError, match="guidance"):
            sample(model, NoiseSchedule(10), (3, 1, 16, 16), cond, steps=2, guidance=bad)


def test_sample_rejects_bad_input():
    s = NoiseSchedule(10)
    model = build_denoiser(16, base_channels=8, channel_mults=(1, 2))
    with pytest.raises(ValueError, match="16x16"):
        sample(model, s, (2, 1, 32, 32), steps=2)
    with pytest.raises(ValueError, match="rows"):
        sample(model, s, (2, 1, 16, 16), torch.zeros(3, 10), steps=2)
    with pytest.raises(ValueError, match="eta"):
        sample(model, s, (2, 1, 16, 16), steps=2, eta=1.5)
    with pytest.raises(ValueError, match="shape"):
        sample(model, s, None, steps=2)


# --------------------------------------------------------------------------- the network and conditioning
@pytest.mark.parametrize("size", [32, 64])
def test_unet_keeps_the_shape_and_listens_to_time_and_condition(size):
    unet = _randomize(UNet(size, base_channels=8, channel_mults=(1, 2, 2), cond_dim=16, attention=True))
    g = torch.Generator().manual_seed(5)
    x, c = torch.randn(2, 1, size, size, generator=g), torch.randn(2, 16, generator=g)
    t = torch.tensor([10, 10])
    with torch.no_grad():
        out = unet(x, t, c)
        assert out.shape == x.shape
        assert not torch.allclose(out, unet(x, t, -c), atol=1e-4)          # conditioning changes the output
        assert not torch.allclose(out, unet(x, torch.tensor([900, 900]), c), atol=1e-4)   # so does the step
        # each image is processed on its own (GroupNorm, not BatchNorm)
        assert torch.allclose(unet(x[:1], t[:1], c[:1]), out[:1], atol=1e-5)


def test_denoiser_condition_changes_the_prediction():
    model = _randomize(build_denoiser(32, base_channels=8))
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([100, 100])
    with torch.no_grad():
        a = model(x, t, torch.tensor([[1.0] + [0] * 9] * 2))
        b = model(x, t, torch.tensor([[0.0] * 9 + [1.0]] * 2))
    assert a.shape == x.shape and not torch.allclose(a, b, atol=1e-4)


def test_unet_rejects_bad_input():
    unet = UNet(32, base_channels=8, channel_mults=(1, 2, 2), cond_dim=4)
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        unet(torch.zeros(1, 1, 64, 64), torch.tensor([1]))
    with pytest.raises(ValueError, match="unsqueeze|\\(B, 1, 32, 32\\)"):
        unet(torch.zeros(1, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="float"):
        unet(torch.zeros(1, 1, 32, 32, dtype=torch.uint8), torch.tensor([1]))
    with pytest.raises(ValueError, match="needs t"):
        unet(torch.zeros(2, 1, 32, 32), None)
    with pytest.raises(ValueError, match="cond_emb"):
        unet(torch.zeros(2, 1, 32, 32), torch.tensor([1, 2]), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="multiple of 4"):
        UNet(30, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="time_embedding"):
        UNet(32, time_embedding=False, cond_dim=8)
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(torch.tensor([1]), 7)


def test_condition_dropout_uses_the_null_embedding_at_the_given_rate():
    cond, null = torch.randn(20_000, 6), torch.randn(6)
    g = torch.Generator().manual_seed(6)
    out, dropped = drop_condition(cond, null, 0.15, g)
    assert abs(float(dropped.float().mean()) - 0.15) < 0.01
    assert torch.equal(out[dropped], null.expand(int(dropped.sum()), 6))
    assert torch.equal(out[~dropped], cond[~dropped])
    assert not bool(drop_condition(cond, null, 0.0, g)[1].any())
    assert bool(drop_condition(cond, null, 1.0, g)[1].all())
    with pytest.raises(ValueError, match="drop_prob"):
        drop_condition(cond, null, 1.5)
    # in the model: dropping every condition is the unconditional model
    model = _randomize(build_denoiser(16, base_channels=8, channel_mults=(1, 2)))
    x, t, labels = torch.randn(2, 1, 16, 16), torch.tensor([3, 4]), torch.ones(2, 10)
    with torch.no_grad():
        assert torch.equal(model(x, t, labels, drop_prob=1.0), model(x, t, None))
        assert torch.equal(model(x, t, labels, drop_prob=0.0), model(x, t, labels))
    assert model.null_embedding.requires_grad     # learned


def test_findings_from_reports_through_the_labeler():
    from medmm_lite.data import FINDINGS

    c = findings_from_reports(["Large right pleural effusion. No pneumothorax.",
                               "No acute cardiopulmonary abnormality."])
    assert c.shape == (2, len(FINDINGS))
    assert c[0, FINDINGS.index("Pleural Effusion")] == 1 and c[0].sum() == 1
    assert c[1, FINDINGS.index("No Finding")] == 1 and c[1].sum() == 1


def test_resize_images_averages_blocks():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(resize_images(x, 4), x)
    assert torch.equal(resize_images(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    with pytest.raises(ValueError, match="larger"):
        resize_images(x, 8)


# --------------------------------------------------------------------------- learning
def test_diffusion_loss_is_mse_to_the_drawn_noise():
    s = NoiseSchedule(100)
    model = Oracle(s, torch.zeros(2, 1, 8, 8))
    x0 = torch.zeros(2, 1, 8, 8)
    assert float(diffusion_loss(model, s, x0, generator=torch.Generator().manual_seed(0))) < 1e-10
    assert math.isclose(float(diffusion_loss(model, s, x0 + 0.5, t=torch.tensor([10, 10]),
                                             noise=torch.zeros(2, 1, 8, 8))),
                        float(((math.sqrt(s.alphas_cumprod[10]) * 0.5 / math.sqrt(1 - s.alphas_cumprod[10])) ** 2)),
                        rel_tol=1e-5)


def test_a_tiny_ddpm_overfits_one_image():
    torch.manual_seed(0)
    s = NoiseSchedule(200, "cosine")
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    image = ((xx ** 2 + yy ** 2 < 0.5).float() * 1.6 - 0.8).view(1, 1, 16, 16)   # a bright disc on dark
    x0 = image.expand(16, 1, 16, 16)
    model = build_denoiser(16, condition=None, base_channels=16, channel_mults=(1, 2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    t_eval = torch.arange(0, 200, 200 // 16)[:16]
    noise_eval = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))

    def eval_loss():
        with torch.no_grad():
            return float(diffusion_loss(model, s, x0, t=t_eval, noise=noise_eval))

    before = eval_loss()
    for _ in range(150):
        loss = diffusion_loss(model, s, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.2 * before, (before, after)
    # half-way through the noise (abar ~ 0.5) the predicted noise gives the image back
    t = torch.full((16,), 100)
    x_t = q_sample(s, x0, t, noise_eval)
    with torch.no_grad():
        x0_hat = predict_x0(s, x_t, t, model(x_t, t))
    assert float(((x0_hat - image) ** 2).mean()) < 0.1 * float(image.var())


# --------------------------------------------------------------------------- translation
@pytest.fixture(scope="module")
def phantoms():
    from medmm_lite.data import generate_mri_phantoms

    return generate_mri_phantoms(16, image_size=32, seed=0, cache=False)


@pytest.mark.parametrize("size", [32, 64])
def test_translation_unet_shapes(size):
    model = TranslationUNet(size, base_channels=8)
    with torch.no_grad():
        out = model(torch.rand(2, 1, size, size))
    assert out.shape == (2, 1, size, size) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match="shape"):
        model(torch.rand(2, 1, size // 2, size // 2))


def test_l1_translation_learns_t1_to_t2(phantoms):
    torch.manual_seed(0)
    model = build_translation(32, base_channels=8, channel_mults=(1, 2, 4), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = phantoms.t1[:8], phantoms.t2[:8]
    with torch.no_grad():
        before = float(translation_loss(model, x, y))
    for _ in range(60):
        loss = translation_loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(translation_loss(model, x, y))
    assert after < 0.5 * before, (before, after)


def test_identity_baseline_uses_the_library_metrics(phantoms):
    x, y = phantoms.t1, phantoms.t2
    base = identity_baseline(x, y)
    assert base["psnr"] == pytest.approx(psnr(x, y)) and base["ssim"] == pytest.approx(ssim(x, y))
    assert 5 < base["psnr"] < 30 and -1 < base["ssim"] < 0.9    # T1 is not T2: a low floor to beat
    assert math.isinf(psnr(y, y)) and ssim(y, y) == pytest.approx(1.0)


def test_pix2pix_loss_terms_have_the_right_weights():
    assert PIX2PIX_L1_WEIGHT == 100
    logits = torch.zeros(2, 1, 6, 6)
    fake, target = torch.full((2, 1, 8, 8), 0.3), torch.full((2, 1, 8, 8), 0.5)
    total, logs = pix2pix_generator_loss(logits, fake, target)
    assert float(logs["adv"]) == pytest.approx(math.log(2)) and float(logs["l1"]) == pytest.approx(0.2)
    assert float(total) == pytest.approx(math.log(2) + 100 * 0.2)
    assert float(pix2pix_generator_loss(logits, fake, target, l1_weight=0)[0]) == pytest.approx(math.log(2))
    real_logits, fake_logits = torch.full((2, 1, 6, 6), 2.0), torch.full((2, 1, 6, 6), -1.0)
    expected = 0.5 * (F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0)))
    assert float(pix2pix_discriminator_loss(real_logits, fake_logits)) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="l1_weight"):
        pix2pix_generator_loss(logits, fake, target, l1_weight=-1)


def test_pix2pix_gradients_reach_each_network_only_from_its_own_loss():
    torch.manual_seed(0)
    model = build_translation(32, adversarial=True, base_channels=8, disc_channels=8, seed=0)
    assert isinstance(model, Pix2Pix) and isinstance(model.discriminator, PatchDiscriminator)
    x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    total, logs = model.loss(x, y)
    assert set(logs) == {"adv", "l1", "d_loss"}
    total.backward()
    g_params, d_params = list(model.generator.parameters()), list(model.discriminator.parameters())
    got_g, got_d = [p.grad.clone() for p in g_params], [p.grad.clone() for p in d_params]
    # the generator's loss alone, through the discriminator
    fake = model.generator(x)
    g_loss, _ = pix2pix_generator_loss(model.discriminator(x, fake), fake, y)
    want_g = torch.autograd.grad(g_loss, g_params)
    d_loss = pix2pix_discriminator_loss(model.discriminator(x, y), model.discriminator(x, fake.detach()))
    want_d = torch.autograd.grad(d_loss, d_params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_g, want_g))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_d, want_d))


def test_translation_rejects_bad_input(phantoms):
    model = TranslationUNet(32, base_channels=8)
    with pytest.raises(ValueError, match="same shape"):
        translation_loss(model, torch.rand(2, 1, 32, 32), torch.rand(3, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        translation_loss(model, torch.rand(2, 32, 32), torch.rand(2, 32, 32))
    from medmm_lite.profiles import profile

    with pytest.raises(ValueError, match="nothing to translate"):
        train_translation(profile("smoke"), phantoms, source="t2", target="t2")
    with pytest.raises(ValueError, match="among"):
        train_translation(profile("smoke"), phantoms, target="pd")


# --------------------------------------------------------------------------- cached recipes
@pytest.fixture()
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path))
    monkeypatch.delenv("MEDMM_NO_CACHE", raising=False)
    return tmp_path


def _fake_data(n=24, size=32):
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, 10, generator=g) < 0.3).float()
    cohort = SimpleNamespace(images=torch.rand(n, 1, size, size, generator=g), labels=labels,
                             reports=[f"report {i}" for i in range(n)])
    return SimpleNamespace(cohort=cohort, splits={"train": list(range(16)), "val": [], "test": list(range(16, n))},
                           input_ids=torch.randint(1, 20, (n, 8), generator=g), attention_mask=torch.ones(n, 8),
                           tokenizer=list(range(30)))


def test_train_ddpm_caches_under_an_honest_key(cache_root):
    from medmm_lite.profiles import profile

    P, data = profile("smoke"), _fake_data()
    kw = dict(seed=0, steps=2, batch_size=8, base_channels=8, channel_mults=(1, 2), num_steps=50, progress=False,
              image_size=16)
    model, sched, info = train_ddpm(P, data, **kw)
    assert not info["cached"] and len(info["history"]) == 2 and isinstance(model, ConditionalDenoiser)
    assert model.image_size == 16 and sched.num_steps == 50 and not model.training
    again, _, info2 = train_ddpm(P, data, **kw)
    assert info2["cached"] and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                      again.state_dict().values()))
    _, _, info3 = train_ddpm(P, data, **{**kw, "drop_prob": 0.2})
    assert not info3["cached"]                                   # the dropout rate is part of the key
    out = sample(model, sched, (2, 1, 16, 16), data.cohort.labels[:2], steps=3, guidance=2.0)
    assert out.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="larger"):
        train_ddpm(P, data, **{**kw, "image_size": 64})
    with pytest.raises(ValueError, match="condition"):
        train_ddpm(P, data, **{**kw, "condition": "labels"})


def test_train_ddpm_with_a_report_encoder(cache_root):
    from medmm_lite.profiles import profile

    P, data = profile("smoke"), _fake_data()
    model, sched, info = train_ddpm(P, data, seed=0, steps=2, batch_size=8, base_channels=8, channel_mults=(1, 2),
                                    num_steps=50, progress=False, image_size=16, condition="report")
    cond = (data.input_ids[:2], data.attention_mask[:2])
    assert sample(model, sched, (2, 1, 16, 16), cond, steps=2, guidance=1.5).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("adversarial", [False, True])
def test_train_translation_caches(cache_root, phantoms, adversarial):
    from medmm_lite.profiles import profile

    P = profile("smoke")
    kw = dict(seed=0, steps=2, batch_size=4, base_channels=8, adversarial=adversarial, progress=False,
              disc_channels=8)
    model, info = train_translation(P, phantoms, **kw)
    assert not info["cached"] and model(phantoms.t1[:2]).shape == (2, 1, 32, 32)
    _, info2 = train_translation(P, phantoms, **kw)
    assert info2["cached"]
    _, info3 = train_translation(P, phantoms, target="flair", **kw)
    assert not info3["cached"]
