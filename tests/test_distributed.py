"""From the course to a cluster: fit under torchrun (DDP), the all-gathered contrastive losses,
gradient accumulation, exact resume, and the ``python -m medmm_lite.pretrain`` command line."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from medmm_lite import distributed as D
from medmm_lite.data.tensors import TensorDictDataset
from medmm_lite.objectives import clip_loss, distributed_clip_loss, distributed_nt_xent_loss, nt_xent_loss
from medmm_lite.pretrain.clip import clip_step
from medmm_lite.pretrain.cli import EXIT_STOPPED, main
from medmm_lite.pretrain.registry import PLANNED
from medmm_lite.train import TrainingStopped, fit, slice_batch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker as W  # noqa: E402  (the worker's builders: both sides build the same data and models)

# A SynthCXR run that takes seconds: the smoke profile, shrunk.
TINY_CONFIG = """\
n_studies = 120
image_size = 32
patch_size = 8
dim = 16
depth = 1
heads = 2
vocab_size = 120
max_text_len = 48
batch_size = 16
steps = 6
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def close(a, b, atol=1e-5, rtol=1e-4):
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- torchrun
def test_two_processes_under_torchrun_match_one_process_on_the_global_batch(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDMM_DATA": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(ROOT / "tests" / "ddp_worker.py"),
               str(tmp_path / "result.pt"), str(tmp_path)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    got = torch.load(tmp_path / "result.pt", weights_only=False)
    assert got["world_size"] == 2

    # the losses: the mean over processes is the single-process loss; so are the DDP-averaged gradients
    f = W.global_features()
    for name in ("clip_0.5", "clip_0.75", "nt_xent"):
        a = f["image"].clone().requires_grad_()
        b = (f["view"] if name == "nt_xent" else f["text"]).clone().requires_grad_()
        scale = f["scale"].clone().requires_grad_()
        if name == "nt_xent":
            loss = nt_xent_loss(a, b, temperature=0.2)
        else:
            loss = clip_loss(a, b, scale, image_to_text_weight=float(name.split("_")[1]))
        loss.backward()
        close(got[name]["loss"], loss.item())
        close(got[name]["grad_a"], a.grad)
        close(got[name]["grad_b"], b.grad)
        if name != "nt_xent":
            close(got[name]["grad_scale"], scale.grad.item())

    # one CLIP step: same loss, same gradients
    model, dataset = W.clip_setup()
    history = fit(model, clip_step, dataset, steps=1, grad_clip=None, **W.FIT)
    close(got["clip_step"]["loss"], history.loss)
    for name, p in model.named_parameters():
        close(got["clip_step"]["grads"][name], p.grad)

    # stopped after 2 of 3 steps and resumed on 2 processes = 3 steps on one
    model, dataset = W.clip_setup()
    history = fit(model, clip_step, dataset, steps=3, **W.FIT)
    close(got["clip_resumed"]["loss"], history.loss)
    for name, value in model.state_dict().items():
        close(got["clip_resumed"]["weights"][name], value, atol=1e-4)
    assert got["clip_resumed"]["rng_states_saved"] == 2  # each process's random streams

    # 2 processes x 2 accumulated pieces of 2 = one batch of 8
    model, dataset = W.mlp_setup()
    history = fit(model, W.mse_step, dataset, steps=4, **W.FIT)
    close(got["mlp_accumulated"]["loss"], history.loss)
    for name, value in model.state_dict().items():
        close(got["mlp_accumulated"]["weights"][name], value)

    # the command line under torchrun: one model, written once, by a run that knew it had 2 processes
    assert got["cli_exit"] == 0
    run = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert run["world_size"] == 2 and run["grad_accum"] == 2 and len(run["history"]["loss"]) == 6
    assert (tmp_path / "cli" / "model" / "model.safetensors").exists()


# --------------------------------------------------------------------------- one process
def test_on_one_process_the_helpers_and_distributed_losses_are_the_plain_ones():
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main_process()
    assert not D.init_from_env()  # no torchrun variables: nothing to join
    x = torch.randn(6, 4)
    assert D.all_gather_with_grad(x) is x and D.all_reduce_mean(x) is x and D.all_gather_objects(3) == [3]
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.equal(distributed_clip_loss(a, b, 10.0, 0.75), clip_loss(a, b, 10.0, 0.75))
    assert torch.equal(distributed_nt_xent_loss(a, b, 0.1), nt_xent_loss(a, b, 0.1))


@pytest.mark.parametrize("dataset_kind", ["sample_by_sample", "whole_batch"])
def test_accumulating_two_half_batches_equals_one_full_batch(dataset_kind):
    """An MLP sees samples one at a time, so 2 x B/2 accumulated is one step of B, up to rounding."""
    model_a, data = W.mlp_setup()
    if dataset_kind == "whole_batch":
        data = TensorDictDataset(x=data.tensors[0], y=data.tensors[1])

    def loss_fn(model, batch):
        return W.mse_step(model, batch if isinstance(batch, list) else (batch["x"], batch["y"]))

    one = fit(model_a, loss_fn, data, steps=5, **W.FIT)
    model_b, _ = W.mlp_setup()
    two = fit(model_b, loss_fn, data, steps=5, grad_accum=2, **W.FIT)
    close(two.loss, one.loss)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        close(b, a, atol=1e-6)
    with pytest.raises(ValueError, match="split evenly"):
        fit(model_b, loss_fn, data, steps=1, grad_accum=3, **W.FIT)


def test_slice_batch_cuts_the_batch_rows_only():
    batch = {"image": torch.arange(8).view(4, 2), "ids": [torch.arange(4), torch.zeros(3)], "text": list("abcd"),
             "scale": torch.tensor(2.0)}
    cut = slice_batch(batch, 1, 3, 4)
    assert cut["image"].tolist() == [[2, 3], [4, 5]] and cut["ids"][0].tolist() == [1, 2]
    assert cut["ids"][1].shape == (3,) and cut["text"] == ["b", "c"] and cut["scale"] == 2.0


def test_rng_generators_are_checkpointed_so_a_stopped_run_resumes_exactly(tmp_path):
    """loss_fn draws noise from its own generator; a run stopped at step 3 and resumed must draw
    what the uninterrupted run drew (before, the generator restarted from its seed)."""
    def run(**kwargs):
        model, data = W.mlp_setup()
        noise = torch.Generator().manual_seed(5)

        def loss_fn(m, batch):
            x, y = batch
            return W.mse_step(m, (x + 0.1 * torch.randn(x.shape, generator=noise), y))

        history = fit(model, loss_fn, data, steps=6, rng=noise, **W.FIT, **kwargs)
        return history, model

    whole, whole_model = run()
    path = tmp_path / "run.pt"
    with pytest.raises(TrainingStopped, match="after step 3"):
        run(checkpoint_path=path, stop_after=3)
    resumed, resumed_model = run(checkpoint_path=path)
    assert resumed.loss == whole.loss
    for a, b in zip(whole_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs a checkpoint_path"):
        fit(whole_model, W.mse_step, W.mlp_setup()[1], steps=2, stop_after=1, **W.FIT)


def test_synchronized_batchnorm_swaps_in_sync_modules_and_puts_the_originals_back():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm2d(3)))
    first, inner = model[1], model[2][0]
    with D.synchronized_batchnorm(model):
        assert isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[2][0], nn.SyncBatchNorm)
        assert model[1].weight is first.weight  # shared: the optimiser trains the same tensors
        with torch.no_grad():
            model[1].running_mean.fill_(3.0)
    assert model[1] is first and model[2][0] is inner
    assert torch.equal(first.running_mean, torch.full((4,), 3.0))


# --------------------------------------------------------------------------- the command line
def _cli(tmp_path, out, *extra):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG)
    return ["--objective", "clip", "--profile", "smoke", "--config", str(config), "--steps", "6",
            "--out", str(tmp_path / out), "--no-progress", *extra]


@pytest.mark.parametrize("flags, config, message", [
    (["--objective", "planned_demo"], None,
     "'planned_demo' is not available yet: it comes with lesson 99.*Available now: clip"),
    (["--objective", "vae"], None, "unknown objective 'vae'; available: clip"),
    (["--config", "missing.toml"], None, "config file missing.toml does not exist"),
    ([], "bogus = 1\n", "unknown key 'bogus'. Top-level keys set profile fields"),
    ([], "batch_size = 'big'\n", "batch_size must be a int"),
    ([], "[objective]\ncolour = 'red'\n", r"\[objective\] has unknown key 'colour'; clip's options are"),
    ([], "[objective]\nnegatives = 3\n", "negatives must be a str"),
    ([], "steps = [\n", "is not valid TOML"),
    (["--grad-accum", "0"], None, "--grad-accum must be >= 1"),
])
def test_the_command_line_rejects_bad_input_clearly(tmp_path, capsys, monkeypatch, flags, config, message):
    # every planned objective has landed by now: a stand-in entry keeps the "not yet" path tested
    monkeypatch.setitem(PLANNED, "planned_demo", "lesson 99 (a stand-in for a planned objective)")
    if config is not None:
        (tmp_path / "bad.toml").write_text(config)
        flags = ["--config", str(tmp_path / "bad.toml")]
    with pytest.raises(SystemExit) as exit_info:
        main(_cli(tmp_path, "out") + flags)  # argparse: the last occurrence of a flag wins
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_command_line_stops_resumes_exactly_and_fills_the_lessons_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path / "cache"))
    assert main(_cli(tmp_path, "whole")) == 0

    # the same run, stopped after 3 of 6 steps by the real entry point (as a preempted job) ...
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(ROOT)}
    stopped = subprocess.run([sys.executable, "-m", "medmm_lite.pretrain", *_cli(tmp_path, "parts", "--retrain",
                                                                               "--stop-after", "3")],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == EXIT_STOPPED, stopped.stdout + stopped.stderr
    assert "--resume" in stopped.stdout and not (tmp_path / "parts" / "model").exists()
    with pytest.raises(SystemExit):  # a second start must not silently reuse or overwrite the checkpoints
        main(_cli(tmp_path, "parts", "--retrain"))
    # ... and resumed: the same losses and weights as the uninterrupted run
    assert main(_cli(tmp_path, "parts", "--retrain", "--resume")) == 0
    whole, parts = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("whole", "parts"))
    assert parts["history"]["loss"] == whole["history"]["loss"] and len(whole["history"]["loss"]) == 6
    a, b = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("whole", "parts"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the lesson's own call, with the same profile, finds the model in its cache
    from medmm_lite import profile
    from medmm_lite.data import prepare_data
    from medmm_lite.pretrain.clip import pretrain_clip

    P = profile("smoke").with_(**{k: v for k, v in whole["profile"].items() if k != "name"})
    _, info = pretrain_clip(P, prepare_data(P, seed=0), seed=0, progress=False)
    assert info["cached"] and str(Path(info["path"]).parent) == parts["cache_folder"]
