"""The training loop: learning, schedule, weight decay groups, sampling, eval, checkpoints, resume."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from medmm_lite import train as train_mod
from medmm_lite.train import (History, batch_indices, fetch_batch, fit, move_to_device, param_groups,
                              warmup_cosine)

REPO = Path(__file__).resolve().parents[1]


def _toy_regression(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (2 * x[:, :1] - x[:, 1:2]).tanh()
    return TensorDataset(x, y)


def _mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 1))


def _mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


# --------------------------------------------------------------------------- learning
def test_loss_decreases_on_a_learnable_problem():
    """y = tanh(2 x0 - x1): the MLP must beat the best linear fit (sklearn), which cannot saturate."""
    from sklearn.linear_model import LinearRegression

    data = _toy_regression()
    x, y = data.tensors
    linear = LinearRegression().fit(x.numpy(), y.numpy())
    linear_mse = float(((torch.from_numpy(linear.predict(x.numpy())) - y) ** 2).mean())
    model = _mlp()
    with torch.no_grad():
        before = _mse(model, (x, y)).item()
    history = fit(model, _mse, data, steps=200, batch_size=32, lr=2e-2, device="cpu", progress=False)
    with torch.no_grad():
        after = _mse(model, (x, y)).item()
    assert len(history) == 200 and history.steps == list(range(1, 201))
    assert after < 0.15 * float(y.var()) and after < 0.15 * before
    assert after < 0.7 * linear_mse
    assert history.final_loss < 0.2 * sum(history.loss[:10]) / 10
    assert history.seconds > 0


def test_extra_logged_values_and_history_round_trip(tmp_path):
    data = _toy_regression(64)

    calls = []

    def loss_fn(model, batch):
        loss = _mse(model, batch)
        calls.append(None)
        logs = {"rmse": loss.detach().sqrt(), "constant": 3.0}
        if len(calls) % 2:  # the order of the names must not matter
            logs = dict(reversed(logs.items()))
        if len(calls) > 6:
            logs["late"] = torch.tensor(7.0)  # a name that appears only later
        return loss, logs

    history = fit(_mlp(), loss_fn, data, steps=12, batch_size=16, lr=1e-3, device="cpu",
                  progress=False, log_every=5, eval_fn=lambda m: {"score": 1.5})
    assert history.metrics["constant"] == [3.0] * 12
    assert history.metrics["late"][6:] == [7.0] * 6 and all(math.isnan(v) for v in history.metrics["late"][:6])
    assert all(math.isclose(r, math.sqrt(l), rel_tol=1e-5) for r, l in zip(history.metrics["rmse"], history.loss))
    again = History.from_dict(json.loads(json.dumps(history.to_dict())))
    assert again.to_dict().keys() == history.to_dict().keys()
    assert again.loss == history.loss and again.evals == history.evals and again.steps == history.steps
    assert again.metrics["rmse"] == history.metrics["rmse"] and again.seconds == history.seconds
    import matplotlib
    matplotlib.use("Agg")
    ax = history.plot()
    assert ax.get_xlabel() == "step" and len(ax.lines) >= 1


# --------------------------------------------------------------------------- schedule
def test_warmup_cosine_values():
    kw = dict(total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)       # first update already moves
    assert warmup_cosine(4, **kw) == pytest.approx(0.5)
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)       # end of warmup: the peak
    assert warmup_cosine(54, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert warmup_cosine(99, **kw) == pytest.approx(0.1)      # the last update is at min_lr
    values = [warmup_cosine(s, **kw) for s in range(100)]
    assert all(a >= b for a, b in zip(values[9:], values[10:]))  # never rises after warmup


def test_schedule_matches_transformers():
    from transformers import get_cosine_with_min_lr_schedule_with_warmup_lr_rate

    for total, warmup, ratio in [(100, 10, 0.1), (37, 0, 0.0), (40, 2, 0.25)]:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = get_cosine_with_min_lr_schedule_with_warmup_lr_rate(opt, warmup, total, min_lr_rate=ratio)
        for step in range(total):
            assert warmup_cosine(step, total_steps=total, warmup_steps=warmup, min_lr_ratio=ratio) == \
                pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
            opt.step()
            sched.step()


def test_fit_uses_the_schedule():
    history = fit(_mlp(), _mse, _toy_regression(64), steps=40, batch_size=16, lr=0.02, warmup_steps=4,
                  min_lr_ratio=0.1, device="cpu", progress=False)
    expected = [0.02 * warmup_cosine(s, total_steps=40, warmup_steps=4, min_lr_ratio=0.1) for s in range(40)]
    assert history.lr == pytest.approx(expected)
    default = fit(_mlp(), _mse, _toy_regression(64), steps=40, batch_size=16, lr=0.02, device="cpu",
                  progress=False)
    assert default.lr[0] == pytest.approx(0.01) and default.lr[1] == pytest.approx(0.02)  # 5% of 40 = 2


# --------------------------------------------------------------------------- weight decay
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(10, 4)
        self.other_embedding = nn.Embedding(10, 4)
        self.pos_embed = nn.Parameter(torch.randn(1, 5, 4))
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4))
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 3)
        self.conv = nn.Conv2d(1, 2, 3)
        self.scale = nn.Parameter(torch.ones(()))


def test_weight_decay_groups():
    model = _Tiny()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["conv.weight", "proj.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(
        ["token_embedding.weight", "other_embedding.weight", "pos_embed", "cls_token", "norm.weight",
         "norm.bias", "proj.bias", "conv.bias", "scale"])


def test_weight_decay_groups_agree_with_timm():
    """timm's rule (no decay on 1-D parameters and biases) on a model without embeddings."""
    from timm.optim import param_groups_weight_decay

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(4), nn.LayerNorm(4))
    model(torch.zeros(1, 3, 6, 6))
    ours = [{id(p) for p in g["params"]} for g in param_groups(model, 0.1)]
    theirs = {g["weight_decay"]: {id(p) for p in g["params"]} for g in param_groups_weight_decay(model, 0.1)}
    assert ours == [theirs[0.1], theirs[0.0]]


def test_no_weight_decay_is_applied_to_1d_parameters():
    """With a zero gradient Adam's step is zero, so only decoupled weight decay moves a weight."""
    model = nn.Linear(4, 3)
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    probe = nn.Parameter(torch.ones(()))
    model.register_parameter("probe", probe)

    def loss_fn(m, batch):
        return 0.0 * (m.weight.sum() + m.bias.sum()) + (m.probe - 2) ** 2

    fit(model, loss_fn, _toy_regression(16), steps=5, batch_size=4, lr=0.1, weight_decay=0.5,
        warmup_steps=0, min_lr_ratio=1.0, device="cpu", progress=False)
    assert torch.equal(model.bias, bias)
    assert torch.allclose(model.weight, weight * (1 - 0.1 * 0.5) ** 5)


def test_params_restricts_training():
    model = _mlp()
    first = model[0].weight.detach().clone()
    fit(model, _mse, _toy_regression(64), steps=5, batch_size=16, lr=1e-2, device="cpu", progress=False,
        params=model[3].parameters())
    assert torch.equal(model[0].weight, first)
    with pytest.raises(ValueError, match="not a parameter of the model"):
        fit(model, _mse, _toy_regression(64), steps=1, batch_size=16, lr=1e-2, device="cpu", progress=False,
            params=[nn.Parameter(torch.zeros(2))])
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        fit(model, _mse, _toy_regression(64), steps=1, batch_size=16, lr=1e-2, device="cpu", progress=False,
            params=model[0].parameters())


# --------------------------------------------------------------------------- sampling and batches
def test_batches_are_a_pure_function_of_seed_and_step():
    n, bs = 50, 8  # 6 full batches per epoch, 2 samples dropped
    epoch0 = torch.cat([batch_indices(s, n, bs, seed=1) for s in range(6)])
    assert len(set(epoch0.tolist())) == 48
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(1 * 1_000_003 + 0))[:48]
    assert torch.equal(epoch0, expected)
    epoch1 = torch.cat([batch_indices(s, n, bs, seed=1) for s in range(6, 12)])
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(batch_indices(9, n, bs, seed=1), batch_indices(9, n, bs, seed=1))
    assert not torch.equal(batch_indices(9, n, bs, seed=1), batch_indices(9, n, bs, seed=2))
    plan = train_mod._BatchPlan(n, bs, seed=1)
    assert all(plan(s) == batch_indices(s, n, bs, seed=1).tolist() for s in range(20))


class _BatchedDataset(Dataset):
    """An in-memory dataset that hands out whole batches, counting how it is asked."""

    def __init__(self, n=40):
        self.x = torch.arange(n, dtype=torch.float32)[:, None]
        self.calls = {"getitems": 0, "getitem": 0}

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.calls["getitem"] += 1
        return {"x": self.x[i]}

    def __getitems__(self, indices):
        self.calls["getitems"] += 1
        return {"x": self.x[indices], "note": "kept"}


def test_getitems_fetches_a_batch_in_one_call():
    data = _BatchedDataset()
    seen = []
    model = nn.Linear(1, 1)

    def loss_fn(m, batch):
        assert batch["note"] == "kept" and batch["x"].shape == (8, 1)
        seen.append(batch["x"][:, 0].long().tolist())
        return m(batch["x"]).pow(2).mean()

    fit(model, loss_fn, data, steps=7, batch_size=8, lr=1e-3, device="cpu", progress=False, seed=4)
    assert data.calls == {"getitems": 7, "getitem": 0}
    assert seen == [batch_indices(s, 40, 8, seed=4).tolist() for s in range(7)]
    # a Subset's __getitems__ returns a list of samples: those are collated
    subset = torch.utils.data.Subset(_toy_regression(20), list(range(10)))
    x, y = fetch_batch(subset, [0, 3, 5])
    assert x.shape == (3, 8) and y.shape == (3, 1)


def test_move_to_device_reaches_nested_tensors_only():
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")
    batch = {"img": torch.zeros(2), "meta": ["id", 3, (torch.ones(1), None)], "pair": Pair(torch.ones(1), "x")}
    moved = move_to_device(batch, "meta")
    assert moved["img"].device.type == "meta"
    assert moved["meta"][0] == "id" and moved["meta"][1] == 3 and moved["meta"][2][1] is None
    assert moved["meta"][2][0].device.type == "meta"
    assert isinstance(moved["pair"], Pair) and moved["pair"].a.device.type == "meta" and moved["pair"].b == "x"


def _tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),  # no bias: BN cancels it
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 1))


def test_channels_last_trains_the_same_model_and_hands_it_back_contiguous(tmp_path):
    """channels_last (the CUDA default for CNNs) changes the memory layout, not the maths: the same
    losses and weights up to rounding, and the model comes back in the default format, so
    safetensors (which refuses non-contiguous tensors) can save it and a resumed run can load it."""
    from safetensors.torch import save_model

    from medmm_lite.backbones import image_encoder
    from medmm_lite.profiles import profile
    from medmm_lite.train import has_real_convolutions

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 16, 16, generator=g)
    data = TensorDataset(x, x.mean((1, 2, 3))[:, None])
    seen = []

    def loss(model, batch):
        images, target = batch
        seen.append(images.stride(1) == 1)   # channels last (with one channel both layouts count as contiguous)
        return nn.functional.mse_loss(model(images), target)

    runs = {}
    for flag in (False, True):
        model = _tiny_cnn()
        history = fit(model, loss, data, steps=20, batch_size=16, lr=1e-2, device="cpu", progress=False,
                      channels_last=flag)
        runs[flag] = (history.loss, model)
        assert all(p.is_contiguous() for p in model.parameters())
        save_model(model, str(tmp_path / f"cnn_{flag}.safetensors"))
    assert seen == [False] * 20 + [True] * 20
    assert runs[False][0] == pytest.approx(runs[True][0], rel=1e-4, abs=1e-6)
    for a, b in zip(runs[False][1].parameters(), runs[True][1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    assert has_real_convolutions(_tiny_cnn())
    assert not has_real_convolutions(image_encoder(profile("smoke"), stem="linear"))   # patch embedding only
    assert has_real_convolutions(image_encoder(profile("smoke")))   # the course's ViT: its stem's 3x3 layers
    assert not has_real_convolutions(_mlp())

    # resuming a finished channels-last run returns the model contiguous too
    model = _tiny_cnn()
    ckpt = tmp_path / "cnn.pt"
    fit(model, loss, data, steps=4, batch_size=16, lr=1e-2, device="cpu", progress=False, channels_last=True,
        checkpoint_path=ckpt)
    again = _tiny_cnn(seed=1)
    fit(again, loss, data, steps=4, batch_size=16, lr=1e-2, device="cpu", progress=False, channels_last=True,
        checkpoint_path=ckpt)
    assert all(p.is_contiguous() for p in again.parameters())
    for a, b in zip(model.parameters(), again.parameters()):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- evaluation
def test_eval_fn_runs_in_eval_mode_without_grad():
    calls = []

    def eval_fn(model):
        calls.append((model.training, torch.is_grad_enabled()))
        return {"acc": torch.tensor(0.5)}

    def loss_fn(model, batch):
        assert model.training
        return _mse(model, batch)

    history = fit(_mlp(dropout=0.2), loss_fn, _toy_regression(64), steps=25, batch_size=16, lr=1e-3,
                  device="cpu", progress=False, eval_fn=eval_fn, eval_every=10)
    assert calls == [(False, False)] * 3
    assert [s for s, _ in history.evals] == [10, 20, 25]
    assert history.eval_curve("acc") == ([10, 20, 25], [0.5, 0.5, 0.5])


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_a_clear_error():
    data = _toy_regression(20)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        fit(_mlp(), _mse, data, steps=1, batch_size=32, lr=1e-3, device="cpu", progress=False)
    with pytest.raises(TypeError, match="scalar tensor"):
        fit(_mlp(), lambda m, b: m(b[0]), data, steps=1, batch_size=4, lr=1e-3, device="cpu", progress=False)
    with pytest.raises(ValueError, match="steps"):
        fit(_mlp(), _mse, data, steps=0, batch_size=4, lr=1e-3, device="cpu", progress=False)
    with pytest.raises(ValueError, match="lr"):
        fit(_mlp(), _mse, data, steps=1, batch_size=4, lr=-1, device="cpu", progress=False)
    with pytest.raises(FloatingPointError, match="diverged"):
        fit(_mlp(), lambda m, b: _mse(m, b) * float("nan"), data, steps=3, batch_size=4, lr=1e-3,
            device="cpu", progress=False)
    frozen = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        fit(frozen, _mse, data, steps=1, batch_size=4, lr=1e-3, device="cpu", progress=False)


# --------------------------------------------------------------------------- checkpoints
def _fit_ckpt(model, path, steps=10, **kw):
    return fit(model, _mse, _toy_regression(64), steps=steps, batch_size=16, lr=1e-3, device="cpu",
               progress=False, checkpoint_path=path, checkpoint_every=5, **kw)


def test_checkpoint_is_loadable_with_weights_only_and_finished_runs_return_at_once(tmp_path):
    path = tmp_path / "run.pt"
    model = _mlp(dropout=0.1)
    history = _fit_ckpt(model, path)
    state = torch.load(path, weights_only=True)
    assert state["step"] == 10 and state["format"] == train_mod.CHECKPOINT_FORMAT
    assert state["rng"]["torch"].dtype == torch.uint8
    assert History.from_dict(state["history"]).loss == history.loss

    def must_not_train(model, batch):
        raise AssertionError("a finished checkpoint should not train again")

    fresh = _mlp(seed=5, dropout=0.1)
    again = fit(fresh, must_not_train, _toy_regression(64), steps=10, batch_size=16, lr=1e-3, device="cpu",
                progress=False, checkpoint_path=path, checkpoint_every=5)
    assert again.loss == history.loss
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_checkpoint_files_are_never_partial(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    real_save, calls = torch.save, []

    def crash_during_second_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:
            Path(f).write_bytes(b"half a checkpoint")  # the process dies mid-write
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_during_second_save)
    with pytest.raises(KeyboardInterrupt):
        _fit_ckpt(_mlp(), path)
    assert torch.load(path, weights_only=True)["step"] == 5  # the older, complete checkpoint
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind
    assert Path(calls[1]) != path  # torch.save never wrote to the real path


def test_checkpoint_from_another_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "run.pt"
    _fit_ckpt(_mlp(), path, steps=5)
    other = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1), nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r"written for a different model: missing keys \['2.bias', '2.weight'\]"
                                         r", unexpected keys \[\]") as err:
        _fit_ckpt(other, path, steps=10)
    assert "mismatched shapes" in str(err.value) and "delete it or use another checkpoint_path" in str(err.value)
    with pytest.raises(ValueError, match="other settings.*lr=0.001 there but 0.002 now"):
        fit(_mlp(), _mse, _toy_regression(64), steps=5, batch_size=16, lr=2e-3, device="cpu", progress=False,
            checkpoint_path=path, checkpoint_every=5)


WORKER = textwrap.dedent("""
    import json, random, sys, time
    import numpy as np
    import torch
    from torch import nn
    from medmm_lite.train import fit

    checkpoint, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (2 * x[:, :1] - x[:, 1:2]).tanh()
    data = torch.utils.data.TensorDataset(x, y)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.3), nn.Linear(32, 1))
    random.seed(1)
    np.random.seed(2)

    def loss_fn(m, batch):
        time.sleep(pause)  # only to give the parent time to kill us mid-run
        xb, yb = batch
        # noise from torch, NumPy and Python RNGs: a resume must restore all three
        noise = 0.05 * torch.randn_like(yb) + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        return nn.functional.mse_loss(m(xb), yb + noise)

    history = fit(model, loss_fn, data, steps=40, batch_size=32, lr=3e-3, seed=3, device="cpu",
                  progress=False, checkpoint_path=None if checkpoint == "-" else checkpoint,
                  checkpoint_every=5)
    torch.save(model.state_dict(), out)
    with open(out + ".json", "w") as f:
        json.dump(history.to_dict(), f)
""")


def test_kill_and_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    ckpt = tmp_path / "run.pt"

    def launch(checkpoint, out, pause):
        return subprocess.Popen([sys.executable, str(script), str(checkpoint), str(out), str(pause)],
                                env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    reference = launch("-", tmp_path / "reference.pt", 0.0)
    victim = launch(ckpt, tmp_path / "never.pt", 0.08)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and victim.poll() is None:
        if ckpt.exists():
            step = torch.load(ckpt, weights_only=True)["step"]  # atomic: always a whole file
            if step >= 10:
                victim.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.01)
    victim.wait(timeout=60)
    assert killed_at is not None, f"the worker ended before it could be killed: {victim.stderr.read().decode()}"
    assert victim.returncode == -signal.SIGKILL
    interrupted = torch.load(ckpt, weights_only=True)["step"]
    assert 10 <= interrupted < 40, "the kill must land mid-run"
    assert not (tmp_path / "never.pt").exists()

    resumed = launch(ckpt, tmp_path / "resumed.pt", 0.0)
    for proc in (resumed, reference):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()

    final = torch.load(tmp_path / "resumed.pt", weights_only=True)
    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    assert final.keys() == expected.keys()
    for name in expected:
        assert torch.equal(final[name], expected[name]), name
    resumed_history = json.loads((tmp_path / "resumed.pt.json").read_text())
    reference_history = json.loads((tmp_path / "reference.pt.json").read_text())
    assert resumed_history["steps"] == list(range(1, 41))
    assert resumed_history["loss"] == reference_history["loss"]


def test_amp_on_a_cpu_autocasts_to_bfloat16():
    seen = []

    def loss(model, batch):
        out = model(batch[0])
        seen.append(out.dtype)
        return ((out.float() - batch[1]) ** 2).mean()

    history = fit(_mlp(), loss, _toy_regression(64), steps=2, batch_size=16, lr=1e-3, device="cpu",
                  progress=False, amp=True)
    assert seen == [torch.bfloat16] * 2 and all(math.isfinite(v) for v in history.loss)
    seen.clear()
    fit(_mlp(), loss, _toy_regression(64), steps=1, batch_size=16, lr=1e-3, device="cpu", progress=False)
    assert seen == [torch.float32]


def test_the_dry_run_cap_shortens_every_fit_and_names_itself_in_cache_keys(monkeypatch):
    from medmm_lite.hub import cache_key
    real_key = cache_key("model", {"steps": 600})
    monkeypatch.setenv("MEDMM_MAX_STEPS", "3")
    history = fit(_mlp(), _mse, _toy_regression(64), steps=600, batch_size=16, lr=1e-3, warmup_steps=50,
                  device="cpu", progress=False)
    assert len(history.loss) == 3
    assert cache_key("model", {"steps": 600}) != real_key, "a 3-step model must not be cached as the real one"
    monkeypatch.setenv("MEDMM_MAX_STEPS", "0")
    with pytest.raises(ValueError, match="MEDMM_MAX_STEPS must be a positive integer"):
        fit(_mlp(), _mse, _toy_regression(64), steps=6, batch_size=16, lr=1e-3, device="cpu", progress=False)
