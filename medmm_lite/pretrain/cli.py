"""``python -m medmm_lite.pretrain``: pretrain one of the course's objectives from the command line.

    python -m medmm_lite.pretrain --objective clip --profile gpu --out runs/clip
    torchrun --nproc_per_node=8 -m medmm_lite.pretrain --objective clip --profile gpu --out runs/clip

It runs the lesson's own recipe (``pretrain_clip``, ``pretrain_mae``...) on SynthCXR or a
prepared real dataset, inside :func:`medmm_lite.train.fit_defaults`: the recipe decides what
is trained, and so the model's cache key, exactly as in the lesson; the command line adds
how (processes, mixed precision, gradient accumulation, checkpoints, resuming, stopping).

What lands where:

* ``OUT/checkpoints/<stage>.pt``: one resumable checkpoint per training stage (``--resume``);
* ``OUT/model/``: a copy of the final model (``model.safetensors``, ``info.json``);
* ``$MEDMM_DATA/models/<name>-<key>/``: the same model in the lessons' cache, under the key
  the lesson computes for the same profile, seed, dataset and options, so the lesson loads
  it instead of training (see ``docs/scaling.md``);
* ``OUT/run.json``: what ran, with the training history.

Before anything is prepared or trained, the run checks what it was given: profile values in
range (a TOML value out of range, or a non-UTF-8 file, is exit 2 with a message), ``--out``
writable, a batch that fits in the training split, and CUDA for the gpu profile (without it
the run refuses, unless ``--allow-cpu``).

Exit status: 0 done, 2 bad input, 75 stopped by ``--stop-after`` (resume with ``--resume``).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_model

from .. import distributed as D
from .. import profile, seed_everything
from ..hub import data_fingerprint
from ..train import History, TrainingStopped, fit_defaults
from ..utils import atomic_save
from .registry import OBJECTIVES, PLANNED, get_objective

EXIT_STOPPED = 75  # EX_TEMPFAIL: "try again later", the code a preempted job should requeue on
PROFILE_NAMES = ("smoke", "cpu", "gpu", "auto")


class ConfigError(ValueError):
    """A bad config file or option: reported as a usage error."""


# --------------------------------------------------------------------------- config
def read_config(path) -> dict:
    """A TOML file as a dict, with clear errors for a missing or malformed file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError as err:
            raise ConfigError("reading a --config file needs Python 3.11+ (tomllib) or `pip install tomli`") from err
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at position "
                          f"{err.start}); TOML files must be UTF-8: save it again as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({type(err).__name__}: {err.strerror or err})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err


def _check_type(where: str, key: str, value, default):
    """``value`` must have the type of ``default`` (an int is fine for a float)."""
    if default is None:
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"{where}: {key} must be a string, number or boolean, got {value!r}")
        return value
    expected = type(default)
    ok = (isinstance(value, bool) if expected is bool
          else isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float
          else isinstance(value, expected) and not (expected is int and isinstance(value, bool)))
    if not ok:
        raise ConfigError(f"{where}: {key} must be a {expected.__name__} (like {default!r}), got {value!r}")
    return float(value) if expected is float else value


# The smallest value each profile field may take (a zero or negative size, or a batch of one for a
# contrastive loss, fails later with a traceback, or trains nothing).
PROFILE_MINIMA = {"n_studies": 3, "image_size": 16, "patch_size": 1, "dim": 1, "depth": 1, "heads": 1,
                  "vocab_size": 1, "max_text_len": 3, "batch_size": 2, "steps": 1, "probe_steps": 1}


def check_profile(P, where: str) -> None:
    """A ConfigError (exit 2) for profile values out of range; ``where`` names their source."""
    for name, smallest in PROFILE_MINIMA.items():
        value = getattr(P, name)
        if value < smallest:
            raise ConfigError(f"{where}: {name} must be >= {smallest}, got {value}")
    if P.image_size % P.patch_size:
        raise ConfigError(f"{where}: image_size {P.image_size} must be a multiple of patch_size {P.patch_size} "
                          "(the ViT cuts the image into whole patches)")
    if P.dim % P.heads:
        raise ConfigError(f"{where}: dim {P.dim} must be divisible by heads {P.heads} (each head gets dim // heads "
                          "channels)")
    if not (math.isfinite(P.lr) and P.lr > 0):
        raise ConfigError(f"{where}: lr must be a finite number > 0, got {P.lr}")


def split_config(config: dict, profile, objective, source: str) -> tuple[dict, dict]:
    """``(profile changes, recipe options)`` from a config: top-level keys set profile fields,
    the ``[objective]`` table sets the recipe's own options. Unknown keys are errors."""
    fields = {f.name for f in dataclasses.fields(profile)} - {"name"}
    changes, options = {}, {}
    for key, value in config.items():
        if key == "objective":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: 'objective' must be a table ([objective]) of {objective.name}'s options")
            continue
        if key == "name":
            raise ConfigError(f"{source}: the profile is chosen with --profile, not with a 'name' key")
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {key!r}. Top-level keys set profile fields: "
                              f"{', '.join(sorted(fields))}; the recipe's options go under [objective]")
        changes[key] = _check_type(source, key, value, getattr(profile, key))
    allowed = objective.options()
    defaults = {name: p.default for name, p in inspect.signature(objective.load()).parameters.items()}
    for key, value in config.get("objective", {}).items():
        if key not in allowed:
            raise ConfigError(f"{source}: [objective] has unknown key {key!r}; {objective.name}'s options are "
                              f"{', '.join(allowed)}")
        options[key] = _check_type(f"{source} [objective]", key, value, defaults[key])
    return changes, options


# --------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {o.name:8s} lesson {o.lesson}: {o.summary}" for o in OBJECTIVES.values())
    planned = "\n".join(f"  {name:8s} not yet: {when}" for name, when in PLANNED.items())
    parser = argparse.ArgumentParser(
        prog="python -m medmm_lite.pretrain", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain one of the course's objectives; works unchanged under torchrun.",
        epilog=f"objectives:\n{listing}\n{planned}\n\nexit status: 0 done, 2 bad input, "
               f"{EXIT_STOPPED} stopped by --stop-after (continue with --resume)")
    parser.add_argument("--objective", required=True, help="what to pretrain (listed below)")
    parser.add_argument("--dataset", default="synthcxr", help="synthcxr (default, generated) or a prepared real one")
    parser.add_argument("--data-root", help="where a real dataset lies (default: its place under $MEDMM_DATA)")
    parser.add_argument("--profile", default="auto", choices=PROFILE_NAMES, help="the sizes to start from")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run the gpu profile even though torch sees no CUDA device (slow: many hours)")
    parser.add_argument("--config", help="a TOML file: top-level keys override profile fields, "
                                         "an [objective] table sets the recipe's options")
    parser.add_argument("--steps", type=int, help="optimiser steps of the objective (default: the lesson's)")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation, batches, augmentations")
    parser.add_argument("--out", required=True, help="folder for checkpoints, run.json and the final model")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision on CUDA (default: the profile's)")
    parser.add_argument("--grad-accum", type=int, default=1, help="split each batch into this many passes")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: a tenth)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    parser.add_argument("--stop-after", type=int,
                        help=f"stop each training stage after this many steps with a checkpoint (exit {EXIT_STOPPED})")
    parser.add_argument("--retrain", action="store_true", help="train even if the lessons' cache holds the model")
    parser.add_argument("--backend", choices=("nccl", "gloo"), help="torch.distributed backend under torchrun "
                                                                    "(default: nccl on CUDA, gloo on CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def resolve(args) -> tuple:
    """``(objective, profile, recipe options)`` from the arguments, or a ConfigError."""
    try:
        objective = get_objective(args.objective)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    P = profile(args.profile)
    changes, options = {}, {}
    if args.config:
        changes, options = split_config(read_config(args.config), P, objective, str(args.config))
    if args.amp is not None:
        changes["amp"] = args.amp
    P = P.with_(**changes)
    check_profile(P, str(args.config) if args.config and changes else f"profile {P.name}")
    for name, value in (("steps", args.steps), ("grad_accum", args.grad_accum),
                        ("checkpoint_every", args.checkpoint_every), ("stop_after", args.stop_after)):
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if P.device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {P.device!r}")
    if P.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use the cpu profile "
                          "or device = \"cpu\"")
    if P.name == "gpu" and not torch.cuda.is_available() and not getattr(args, "allow_cpu", False):
        raise ConfigError(f"the gpu profile ({P.n_studies:,} studies, {P.steps:,} steps of a {P.dim}-wide model at "
                          f"{P.image_size} px) needs a CUDA device, and torch sees none: on the CPU it would run for "
                          "many hours. Use --profile cpu (or smoke), or pass --allow-cpu to run the gpu profile on "
                          "the CPU anyway")
    return objective, P, options


def check_out(out: Path) -> None:
    """``--out`` must be a folder this process can write, before any data is prepared or step taken
    (an unwritable one used to fail at the first checkpoint, after training had started)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"--out {out} is not a folder this process can write ({type(err).__name__}: "
                          f"{err.strerror or err}); choose another --out") from None


def check_batch_size(P, options: dict, data, dataset: str) -> int:
    """The batch size the run trains with: the requested one, which must fit in the training split
    (the lesson's recipes would shrink it, or fail, with the log and run.json still naming the
    requested size)."""
    requested = options.get("batch_size") or P.batch_size
    n_train = len(data.splits["train"])
    if requested > n_train:
        raise ConfigError(f"batch_size {requested} is larger than the training split of {dataset} ({n_train} "
                          f"studies of {len(data.cohort)}): lower batch_size (at most {n_train}) or raise n_studies")
    return requested


def _user_keys(args, options: dict) -> set:
    """The names of the values this run's command line and config set (for naming a rejected one)."""
    keys = set(options) | {k for k in ("steps", "grad_accum", "checkpoint_every", "stop_after")
                           if getattr(args, k, None) is not None}
    if args.config:
        try:
            config = read_config(args.config)
        except ConfigError:
            config = {}
        keys |= {k for k in config if k != "objective"} | set(config.get("objective", {}))
    return keys


# --------------------------------------------------------------------------- running
def _prepare_data(P, args):
    """The lesson's data; under torchrun rank 0 builds (and caches) it first, then the others load it."""
    from ..data import prepare_data  # medmm_lite.data and transformers load when data is prepared
    from ..data.real import DatasetNotAvailableError

    knobs = {"root": args.data_root} if args.data_root else {}
    if not D.is_main_process():
        D.barrier()
    try:
        data = prepare_data(P, seed=args.seed, dataset=args.dataset, **knobs)
    except (ValueError, TypeError, DatasetNotAvailableError) as err:
        # everything prepare_data is given comes from the command line and the config
        raise ConfigError(f"cannot prepare the data for this run: {err}") from err
    finally:
        if D.is_main_process():
            D.barrier()
    if D.is_distributed():  # e.g. nodes without a shared cache that drew different data
        if len(set(D.all_gather_objects(data_fingerprint(data)))) > 1:
            raise RuntimeError("the processes prepared different training data; check that every node has the "
                               "same dataset and library version")
    return data


def _recipe_arguments(recipe, args, P, options) -> dict:
    """The keyword arguments the recipe accepts, from the command line and the config."""
    accepted = inspect.signature(recipe).parameters
    given = {"seed": args.seed, "steps": args.steps, "device": P.device, "progress": not args.no_progress,
             "dataset": args.dataset, "retrain": args.retrain}
    kwargs = {k: v for k, v in given.items() if k in accepted and not (k == "steps" and v is None)}
    return {**kwargs, **options}


def _history_summary(history):
    if isinstance(history, History) and len(history):
        return {"final_loss": history.final_loss, "history": history.to_dict()}
    return {}


def run(args) -> int:
    objective, P, options = resolve(args)
    out = Path(args.out)
    check_out(out)
    checkpoints = out / "checkpoints"
    resuming = checkpoints.is_dir() and any(checkpoints.glob("*.pt"))
    if resuming and not args.resume:
        raise ConfigError(f"{out} already holds checkpoints of an earlier run: pass --resume to continue it, "
                          "or choose another --out")
    no_cache = os.environ.get("MEDMM_NO_CACHE")
    if args.retrain:
        os.environ["MEDMM_NO_CACHE"] = "1"  # every stage trains again (checkpoints still resume)
    # a caller that already runs a process group (a test, a notebook) keeps it afterwards
    owns_group = not D.is_distributed()
    D.init_from_env(args.backend or ("nccl" if P.device == "cuda" else "gloo"))
    main = D.is_main_process()

    def say(message: str) -> None:
        if main:
            print(f"[pretrain] {message}", flush=True)

    try:
        if P.name == "gpu" and P.device == "cpu":
            say("WARNING: the gpu profile on the CPU (--allow-cpu): torch sees no CUDA device, so this will take "
                "many hours")
        seed_everything(args.seed + D.rank())  # dropout and the like differ between processes
        data = _prepare_data(P, args)
        batch_size = check_batch_size(P, options, data, args.dataset)
        recipe = objective.load()
        kwargs = _recipe_arguments(recipe, args, P, options)
        say(f"{objective.name} on {args.dataset}, profile {P.name}, {D.world_size()} process(es), "
            f"batch {batch_size} ({batch_size // D.world_size() // args.grad_accum} per pass), device {P.device}")
        if args.resume and not resuming:
            say(f"nothing to resume in {checkpoints}: starting from the beginning")
        started = time.perf_counter()
        try:
            with fit_defaults(checkpoint_dir=checkpoints, checkpoint_every=args.checkpoint_every,
                              grad_accum=args.grad_accum, stop_after=args.stop_after):
                model, info = recipe(P, data, **kwargs)
        except TrainingStopped as stop:
            say(f"stopped after step {stop.step} as asked; checkpoint {stop.checkpoint_path}. "
                "Run the same command with --resume to continue.")
            return EXIT_STOPPED
        except ValueError as err:
            # a value the user set, out of range for the recipe (its own checks name the option)
            named = [k for k in _user_keys(args, options) if re.search(rf"\b{k}\b", str(err))]
            if named:
                raise ConfigError(f"{objective.name} rejected {', '.join(sorted(named))}: {err}") from err
            raise
        folder = Path(info["path"]).parent if info.get("path") else None
        if main:
            if folder is not None:
                shutil.copytree(folder, out / "model", dirs_exist_ok=True)
            else:  # the lessons' cache could not be written (a full disk): keep the model here at least
                _save_model_copy(model, out / "model", say)
            record = {"objective": objective.name, "dataset": args.dataset, "seed": args.seed, "steps": args.steps,
                      "batch_size": batch_size, "profile": dataclasses.asdict(P), "options": options,
                      "world_size": D.world_size(), "grad_accum": args.grad_accum,
                      "cache_folder": str(folder) if folder is not None else None, "cached": info["cached"],
                      "seconds": time.perf_counter() - started, "arguments": vars(args),
                      **_history_summary(info.get("history"))}
            (out / "run.json").write_text(json.dumps(record, indent=1))
        if folder is None:
            say(f"trained {objective.name}, but the lessons' cache could not hold it (see the warning above); "
                f"the model is in {out / 'model'}")
        else:
            say(f"{'loaded' if info['cached'] else 'trained'} {folder.name}: copied to {out / 'model'}; a lesson "
                f"with PROFILE={P.name!r}, SEED={args.seed}, DATASET={args.dataset!r}, the same profile changes and "
                "options and this library version loads it from the cache")
        D.barrier()
        return 0
    finally:
        if owns_group:
            D.shutdown()
        if no_cache is None:
            os.environ.pop("MEDMM_NO_CACHE", None)
        else:
            os.environ["MEDMM_NO_CACHE"] = no_cache


def _save_model_copy(model, folder: Path, say) -> None:
    try:
        atomic_save(lambda tmp: save_model(model, tmp), folder / "model.safetensors")
    except OSError as err:
        say(f"WARNING: could not save the model to {folder} either ({err})")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as err:
        parser.error(str(err))  # exits with status 2


__all__ = ["main", "run", "build_parser", "read_config", "split_config", "ConfigError", "EXIT_STOPPED"]
