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

Exit status: 0 done, 2 bad input, 75 stopped by ``--stop-after`` (resume with ``--resume``).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import shutil
import time
from pathlib import Path

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
        return tomllib.loads(path.read_text())
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
    from .. import profile

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
    for name, value in (("steps", args.steps), ("grad_accum", args.grad_accum),
                        ("checkpoint_every", args.checkpoint_every), ("stop_after", args.stop_after)):
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if P.device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {P.device!r}")
    if P.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use the cpu profile "
                              "or device = \"cpu\"")
    return objective, P, options


# --------------------------------------------------------------------------- running
def _prepare_data(P, args):
    """The lesson's data; under torchrun rank 0 builds (and caches) it first, then the others load it."""
    from .. import distributed as D
    from ..data import prepare_data

    knobs = {"root": args.data_root} if args.data_root else {}
    if not D.is_main_process():
        D.barrier()
    data = prepare_data(P, seed=args.seed, dataset=args.dataset, **knobs)
    if D.is_main_process():
        D.barrier()
    if D.is_distributed():  # e.g. nodes without a shared cache that drew different data
        from .clip import data_fingerprint

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
    from ..train import History

    if isinstance(history, History) and len(history):
        return {"final_loss": history.final_loss, "history": history.to_dict()}
    return {}


def run(args) -> int:
    from .. import distributed as D
    from .. import seed_everything
    from ..train import TrainingStopped, fit_defaults

    objective, P, options = resolve(args)
    out = Path(args.out)
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
        seed_everything(args.seed + D.rank())  # dropout and the like differ between processes
        data = _prepare_data(P, args)
        recipe = objective.load()
        kwargs = _recipe_arguments(recipe, args, P, options)
        say(f"{objective.name} on {args.dataset}, profile {P.name}, {D.world_size()} process(es), "
            f"batch {P.batch_size} ({P.batch_size // D.world_size() // args.grad_accum} per pass), device {P.device}")
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
        folder = Path(info["path"]).parent
        if main:
            shutil.copytree(folder, out / "model", dirs_exist_ok=True)
            record = {"objective": objective.name, "dataset": args.dataset, "seed": args.seed, "steps": args.steps,
                      "profile": dataclasses.asdict(P), "options": options, "world_size": D.world_size(),
                      "grad_accum": args.grad_accum, "cache_folder": str(folder), "cached": info["cached"],
                      "seconds": time.perf_counter() - started, "arguments": vars(args),
                      **_history_summary(info.get("history"))}
            (out / "run.json").write_text(json.dumps(record, indent=1))
        say(f"{'loaded' if info['cached'] else 'trained'} {folder.name}: copied to {out / 'model'}; a lesson with "
            f"PROFILE={P.name!r}, SEED={args.seed}, DATASET={args.dataset!r}, the same profile changes and options "
            "and this library version loads it from the cache")
        D.barrier()
        return 0
    finally:
        if owns_group:
            D.shutdown()
        if no_cache is None:
            os.environ.pop("MEDMM_NO_CACHE", None)
        else:
            os.environ["MEDMM_NO_CACHE"] = no_cache


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as err:
        parser.error(str(err))  # exits with status 2


__all__ = ["main", "run", "build_parser", "read_config", "split_config", "ConfigError", "EXIT_STOPPED"]
