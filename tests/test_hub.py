"""The model cache: train once, load after; keys, corruption, tied weights, MEDMM_NO_CACHE."""
from pathlib import Path

import pytest
import torch
from torch import nn

from medmm_lite import hub
from medmm_lite.hub import load_or_train
from medmm_lite.train import History, fit


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDMM_NO_CACHE", raising=False)


def build():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


class Trainer:
    """A train_fn that counts its calls and really trains (so weights differ from a fresh build)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 2, generator=g))
        return fit(model, lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), data, steps=5, batch_size=16,
                   lr=1e-2, device="cpu", progress=False)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_second_call_loads_without_training(caplog):
    caplog.set_level("INFO", logger="medmm_lite.hub")
    train = Trainer()
    key = {"profile": "smoke", "seed": 0}
    first, info1 = load_or_train("toy", train, build_fn=build, key=key)
    assert train.calls == 1 and info1["cached"] is False and isinstance(info1["history"], History)
    assert "trained toy" in caplog.text
    caplog.clear()
    second, info2 = load_or_train("toy", train, build_fn=build, key=dict(reversed(key.items())))
    assert train.calls == 1 and info2["cached"] is True
    assert "loaded toy-" in caplog.text and str(Path.home()) not in caplog.text
    assert info2["path"] == info1["path"] and info2["path"].endswith("model.safetensors")
    assert _same_weights(first, second)  # BatchNorm running statistics included
    assert not _same_weights(first, build())
    assert info2["history"] == info1["history"]
    assert info2["train_seconds"] == pytest.approx(info1["train_seconds"])


def test_different_key_code_or_flags_retrain(monkeypatch, tmp_path):
    train = Trainer()
    load_or_train("toy", train, build_fn=build, key={"seed": 0})
    load_or_train("toy", train, build_fn=build, key={"seed": 1})
    assert train.calls == 2
    load_or_train("toy2", train, build_fn=build, key={"seed": 0})
    assert train.calls == 3
    load_or_train("toy", train, build_fn=build, key={"seed": 0}, retrain=True)
    assert train.calls == 4
    monkeypatch.setenv("MEDMM_NO_CACHE", "1")
    load_or_train("toy", train, build_fn=build, key={"seed": 0})
    assert train.calls == 5
    monkeypatch.delenv("MEDMM_NO_CACHE")
    monkeypatch.setattr(hub, "code_version", lambda modules=None: "another-library-version")
    load_or_train("toy", train, build_fn=build, key={"seed": 0})
    assert train.calls == 6
    _, info = load_or_train("toy", train, build_fn=build, key={"seed": 0}, cache_dir=tmp_path / "elsewhere")
    assert train.calls == 7 and info["path"].startswith(str(tmp_path / "elsewhere"))


def test_code_version_hashes_the_package_sources():
    version = hub.code_version()
    assert version == hub.code_version() and len(version) == 16
    assert hub.code_version(["medmm_lite.models.vit"]) != hub.code_version(["medmm_lite.models.text"])
    assert hub.cache_key("toy", {"a": 1}) != hub.cache_key("toy", {"a": 2})
    assert hub.cache_key("toy", {"a": 1, "b": 2}) == hub.cache_key("toy", {"b": 2, "a": 1})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_architecture", "bad_info"])
def test_corrupt_cache_warns_and_retrains(damage):
    train = Trainer()
    model, info = load_or_train("toy", train, build_fn=build)
    path = Path(info["path"])
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "other_architecture":
        from safetensors.torch import save_model
        save_model(nn.Linear(4, 2), str(path))
    else:
        (path.parent / "info.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="cannot be used"):
        again, info2 = load_or_train("toy", train, build_fn=build)
    assert train.calls == 2 and info2["cached"] is False
    _, info3 = load_or_train("toy", train, build_fn=build)  # repaired
    assert train.calls == 2 and info3["cached"] is True


class TiedLM(nn.Module):
    """A tiny language model whose output layer shares the input embedding's weight."""

    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(11, 6)
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.token_embedding.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.body(self.token_embedding(ids))))


def test_tied_weights_round_trip():
    def train(model):
        ids = torch.randint(0, 11, (32, 5), generator=torch.Generator().manual_seed(0))
        data = torch.utils.data.TensorDataset(ids)
        fit(model, lambda m, b: nn.functional.cross_entropy(m(b[0]).flatten(0, 1), b[0].flatten()), data,
            steps=5, batch_size=8, lr=1e-2, device="cpu", progress=False)
        return {"note": "tied", "value": torch.tensor(1.5)}

    trained, _ = load_or_train("tied_lm", train, build_fn=TiedLM)
    loaded, info = load_or_train("tied_lm", train, build_fn=TiedLM)
    assert info["cached"] and info["history"] == {"note": "tied", "value": 1.5}
    assert loaded.head.weight is loaded.token_embedding.weight  # still one tensor
    assert _same_weights(trained, loaded)
    ids = torch.arange(10)[None]
    assert torch.equal(trained(ids), loaded(ids))


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="identifier"):
        load_or_train("a model/with slash", Trainer(), build_fn=build)
    with pytest.raises(ValueError, match="JSON-able"):
        load_or_train("toy", Trainer(), build_fn=build, key={"fn": print})
    with pytest.raises(TypeError, match="nn.Module"):
        load_or_train("toy", Trainer(), build_fn=lambda: "not a model")
    with pytest.raises(TypeError, match="train_fn must return"):
        load_or_train("toy", lambda m: object(), build_fn=build)
    with pytest.raises(TypeError, match="build_fn"):
        load_or_train("toy", Trainer(), build_fn=None)


def _clip_parts():
    from medmm_lite import backbones, profile
    from medmm_lite.pretrain.clip import CLIPModel

    P = profile("smoke")
    return lambda: CLIPModel(backbones.image_encoder(P), backbones.text_encoder(P, 50), embed_dim=16)


def test_the_key_covers_the_modules_a_model_uses_not_the_whole_library():
    from medmm_lite.pretrain import clip

    build = _clip_parts()
    modules = hub.source_modules(build(), clip.clip_step)
    assert {"medmm_lite.pretrain.clip", "medmm_lite.models.vit", "medmm_lite.models.text",
            "medmm_lite.objectives.contrastive", "medmm_lite.train"} <= set(modules)
    assert "medmm_lite.widgets" not in modules and "medmm_lite.capstone" not in modules


def test_editing_widgets_keeps_a_cached_clip_model_and_editing_clip_retrains_it(tmp_path, monkeypatch, request):
    """Hash a copy of the package, edit one file of the copy, ask for the same model again."""
    import shutil

    from medmm_lite.pretrain.clip import clip_step

    copy = tmp_path / "src" / "medmm_lite"
    shutil.copytree(hub.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(hub, "PACKAGE", copy)
    hub._imported_modules.cache_clear()
    request.addfinalizer(hub._imported_modules.cache_clear)  # forget what was read from the copy
    build, train = _clip_parts(), Trainer()

    def clip_train(model):
        clip_step  # a real training function reaches the CLIP module's step
        train.calls += 1

    def cached():
        return load_or_train("clip_toy", clip_train, build_fn=build, key={"seed": 0})[1]["cached"]

    assert not cached() and cached()
    with open(copy / "widgets.py", "a") as f:
        f.write("\n# a comment added by the test\n")
    assert cached()
    with open(copy / "pretrain" / "clip.py", "a") as f:
        f.write("\n# a comment added by the test\n")
    assert not cached() and train.calls == 2
