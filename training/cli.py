"""The command line: ``python -m training`` trains a RefAny3D adapter outside the server.

It runs the same :class:`training.loop.Trainer` as the RefAny3D Train node, on an encoded dataset
(:mod:`training.encoded`) and a FLUX.1 diffusion-model file loaded through ComfyUI. Settings come
from ``--config file.json|.toml`` (keys as the long flags, ``-`` or ``_``) with flags overriding it.
Under ``torchrun --nproc_per_node N`` it trains with PyTorch DDP over N processes (NCCL on GPUs,
gloo on the CPU); only rank 0 prints and writes. Ctrl-C writes a resumable state and exits (130).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from ._pack import RefAny3DError, model_patches

PACK_ROOT = Path(__file__).resolve().parent.parent

EPILOG = """\
examples:
  python -m training --model flux1-dev.safetensors --data encoded/ --out models/refany3d/chairs --steps 2000
  python -m training --config run.toml --resume latest
  torchrun --nproc_per_node 8 -m training --config run.toml      (8 GPUs, PyTorch DDP over NCCL)

The output folder gets release-<step>/ (default.safetensors, coord.safetensors,
domain_embedder.safetensors; RefAny3D Load Adapter reads them when the folder is under
models/refany3d/) and state-<step>/ (a resumable state: fp32 trainable tensors, optimizer
state, step, loss history, settings; no pickle). Interrupt with Ctrl-C to stop with a state.
"""

#: the run's own options (what to train on, where, how): name -> (argparse keywords, default); the training
#: settings themselves are the fields of TrainConfig (:func:`training.loop.option_table`)
RUN_OPTIONS: dict[str, tuple[dict, object]] = {
    "model": (dict(metavar="FILE", help="the FLUX.1 diffusion model (.safetensors, as ComfyUI's "
                                        "models/diffusion_models holds it); required"), None),
    "data": (dict(metavar="DIR", help="the encoded dataset folder (made by the RefAny3D Encode Training Data node or "
                                      "training.encode_dataset); required"), None),
    "out": (dict(metavar="DIR", help="output folder for release-<step>/ and state-<step>/; required"), None),
    "adapter": (dict(metavar="DIR", help="start from these release files (default.safetensors, coord.safetensors, "
                                         "domain_embedder.safetensors or .pth) instead of the release's fresh init"),
                None),
    "resume": (dict(metavar="STATE|latest", help="continue a run: a state-<step> folder, a folder of them (its "
                                                 "latest), or 'latest' = the latest in --out (a new run if none)"),
               None),
    "overwrite": (dict(action="store_true", help="start a new run in an --out that already holds one (its states "
                                                 "and release folders are replaced); without it such an --out is "
                                                 "refused"), False),
    "base_dtype": (dict(help="weight dtype of the frozen model: default (ComfyUI's choice), bf16, fp16, fp32, "
                             "fp8_e4m3fn or fp8_e5m2 (a 24 GB card)"), "default"),
    "device": (dict(help="auto (default: the GPU of this process when CUDA is available), cpu or cuda"), "auto"),
    "comfyui": (dict(metavar="DIR", help="the ComfyUI folder (default: $COMFYUI_DIR, or the ComfyUI this pack is "
                                         "installed in)"), None),
}
REQUIRED = ("model", "data", "out")
RUN_CHOICES = {"device": ("auto", "cpu", "cuda"), "base_dtype": ("default", "bf16", "fp16", "fp32", "fp8_e4m3fn",
                                                                 "fp8_e5m2")}


def config_options() -> dict[str, tuple[dict, object]]:
    """The TrainConfig fields the command line offers, as argparse keywords and the field's default."""
    from .loop import option_table
    out = {}
    for field in option_table():
        meta = field.metadata
        if not meta["cli"]:
            continue
        kw = {"help": f"{meta['help']} (default {field.default})"}
        if isinstance(field.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif meta["choices"]:
            kw["choices"] = meta["choices"]
        else:
            kw["type"] = int if isinstance(field.default, int) else float
            kw["metavar"] = "N" if kw["type"] is int else "X"
        out[field.name] = (kw, field.default)
    return out


def all_options() -> dict[str, tuple[dict, object]]:
    return {**RUN_OPTIONS, **config_options()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description="Train a RefAny3D adapter (docs/method.md §6) on an encoded dataset and a "
                                "FLUX.1 model: one process, or many under torchrun (PyTorch DDP).",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config", metavar="FILE", help="settings file (.json or .toml); flags override it")
    for name, (kw, _) in all_options().items():
        kw = dict(kw)
        if name in RUN_CHOICES:
            kw["choices"] = RUN_CHOICES[name]
        p.add_argument("--" + name.replace("_", "-"), dest=name, **kw)
    return p


def read_config(path) -> dict:
    """Settings from a .json or .toml file, keys as the long flags (``save-every`` or ``save_every``)."""
    path = Path(path)
    if not path.is_file():
        raise RefAny3DError(f"config file {path} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            values = tomllib.loads(path.read_text())
        else:
            values = json.loads(path.read_text())
    except (ValueError, ImportError) as e:
        raise RefAny3DError(f"config file {path} cannot be read: {e}") from None
    if not isinstance(values, dict):
        raise RefAny3DError(f"config file {path} must hold a table of settings")
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in all_options():
            raise RefAny3DError(f"config file {path}: unknown setting {key!r}; known: "
                                f"{', '.join(n.replace('_', '-') for n in all_options())}")
        out[name] = value
    return out


def settings(argv=None) -> dict:
    """Defaults, then the config file, then the flags; checked."""
    args = vars(build_parser().parse_args(argv))
    from .loop import option_table
    merged = {name: default for name, (_, default) in all_options().items()}
    if "config" in args:
        merged.update(read_config(args.pop("config")))
    merged.update(args)
    missing = [n for n in REQUIRED if not merged.get(n)]
    if missing:
        raise RefAny3DError(f"missing {', '.join('--' + n for n in missing)} (on the command line or in --config)")
    choices = {**RUN_CHOICES, **{f.name: f.metadata["choices"] for f in option_table() if f.metadata["choices"]}}
    for name, allowed in choices.items():
        if merged[name] not in allowed:
            raise RefAny3DError(f"--{name.replace('_', '-')} {merged[name]!r} is not one of {', '.join(allowed)}")
    for field in option_table():
        low, value = field.metadata["low"], merged.get(field.name)
        if low is not None and isinstance(field.default, int) and not (
                isinstance(value, int) and not isinstance(value, bool) and value >= low):
            what = "a positive whole number" if low == 1 else f"a whole number ≥ {low}"
            raise RefAny3DError(f"--{field.name.replace('_', '-')} must be {what}, got {value!r}")
    return merged


# ------------------------------------------------------------------------------------------------
# ComfyUI and the model

def find_comfyui(comfyui=None) -> Path:
    """The ComfyUI folder: ``comfyui``, else $COMFYUI_DIR, else the ComfyUI this pack sits in
    (``ComfyUI/custom_nodes/<pack>``)."""
    candidates = [(comfyui, "--comfyui")] if comfyui else []
    if os.environ.get("COMFYUI_DIR"):
        candidates.append((os.environ["COMFYUI_DIR"], "COMFYUI_DIR"))
    candidates.append((PACK_ROOT.parent.parent, "the folder this pack is installed in"))
    for folder, _ in candidates:
        if (Path(folder) / "comfy" / "model_management.py").is_file():
            return Path(folder).resolve()
    folder, source = candidates[0]
    raise RefAny3DError(f"no ComfyUI at {folder} ({source}): pass --comfyui DIR or set COMFYUI_DIR to the ComfyUI "
                        "folder (the one with main.py and comfy/)")


def use_comfyui(comfyui=None, cpu: bool | None = None) -> Path:
    """Makes ComfyUI's ``comfy`` package importable in this process (:mod:`training.comfyui`), found as
    :func:`find_comfyui` says unless ComfyUI is already loaded; returns its folder."""
    from .comfyui import loaded_comfyui
    from .comfyui import use_comfyui as bootstrap
    return loaded_comfyui() or bootstrap(find_comfyui(comfyui), cpu)


BASE_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8_e4m3fn": "float8_e4m3fn",
               "fp8_e5m2": "float8_e5m2"}


def load_flux(path, base_dtype: str = "default", device=None):
    """``(ModelPatcher, Flux)`` of a FLUX.1 diffusion-model file loaded by ComfyUI
    (``comfy.sd.load_diffusion_model``), checked to be a FLUX.1 the RefAny3D loop knows."""
    import comfy.sd
    import torch

    path = Path(path)
    if not path.is_file():
        raise RefAny3DError(f"model file {path} does not exist")
    options = {} if base_dtype == "default" else {"dtype": getattr(torch, BASE_DTYPES[base_dtype])}
    try:
        patcher = comfy.sd.load_diffusion_model(str(path), model_options=options)
    except RuntimeError as e:
        raise RefAny3DError(f"ComfyUI cannot load {path} as a diffusion model: {e}") from None
    if patcher is None:
        raise RefAny3DError(f"ComfyUI does not recognise {path} as a diffusion model")
    flux = model_patches.check_flux(patcher)
    if device is not None and next(flux.parameters()).device != torch.device(device):
        flux.to(device)
    return patcher, flux


def release_paths(folder) -> tuple[Path, Path, Path]:
    from ._pack import RELEASE_FILES

    from .checkpoint import EMBEDDER_FILE
    folder = Path(folder)
    if not folder.is_dir():
        raise RefAny3DError(f"--adapter {folder} is not a folder of release files")
    ref, dom = folder / RELEASE_FILES["reference"], folder / RELEASE_FILES["domain"]
    emb = next((p for p in (folder / EMBEDDER_FILE, folder / RELEASE_FILES["domain_embedder"]) if p.is_file()), None)
    for p in (ref, dom):
        if not p.is_file():
            raise RefAny3DError(f"--adapter {folder} has no {p.name}")
    if emb is None:
        raise RefAny3DError(f"--adapter {folder} has no {EMBEDDER_FILE} or {RELEASE_FILES['domain_embedder']}")
    return ref, dom, emb


# ------------------------------------------------------------------------------------------------

def refuse_to_replace_run(out: Path, resume, overwrite: bool) -> None:
    """A new run never replaces an earlier run's states and release files in ``out`` unasked."""
    from . import checkpoint as ckpt
    if resume or overwrite or not out.is_dir():
        return
    earlier = ckpt.state_dirs(out) + sorted(out.glob("release-*"))
    if earlier:
        raise RefAny3DError(f"--out {out} already holds a training run ({earlier[-1].name} and "
                            f"{len(earlier) - 1} more): continue it with --resume latest, choose another --out, "
                            "or add --overwrite to start a new run there")


def run(opts: dict) -> int:
    from .distributed import init_distributed, teardown
    from .encoded import EncodedDataset

    data = EncodedDataset(opts["data"])  # a bad folder fails before the model is loaded
    out, resume = Path(opts["out"]), opts["resume"]
    _check_resume(resume, out, opts["overwrite"])
    use_comfyui(opts["comfyui"], cpu=True if opts["device"] == "cpu" else None)
    info = init_distributed(opts["device"])
    say = print if info.is_main else (lambda *a, **k: None)
    trainer = None
    try:
        from .loop import TrainConfig, Trainer, option_table
        patcher, flux = load_flux(opts["model"], opts["base_dtype"], info.device)
        data = data.in_model_space(patcher.model.process_latent_in)
        config = TrainConfig(**{f.name: opts[f.name] for f in option_table() if f.name in opts})
        adapter = _starting_adapter(opts["adapter"], flux, config)
        console = _Console(config, say)
        trainer = Trainer(flux, adapter, data, data.uncond(), config, out_dir=out, rank=info.rank,
                          world_size=info.world_size, on_step=console.on_step, cancel=lambda: console.asked)
        console.trainer = trainer
        if resume:
            _resume(trainer, resume, out, say)
        n_params = sum(p.numel() for p in adapter.parameters())
        say(f"training {n_params:,} parameters (rank {adapter.rank}) on {data.describe()}; "
            f"{info.world_size} process(es) on {info.device}, {config.optimizer}, batch {config.batch_size}"
            f"×{info.world_size}×{config.accumulation}", flush=True)
        return _train(trainer, console, out, say)
    finally:
        if trainer is not None:
            trainer.close()
        teardown()


def _check_resume(resume: str | None, out: Path, overwrite: bool) -> None:
    """``--resume`` names a state (or ``latest``), and a new run never lands on an old one."""
    from . import checkpoint as ckpt
    if resume and resume != "latest" and not ckpt.state_dirs(resume) and not (Path(resume) / "state.json").is_file():
        raise RefAny3DError(f"--resume {resume}: no training state there (a state-<step> folder or a folder of them)")
    refuse_to_replace_run(out, resume, overwrite)


def _starting_adapter(release: str | None, flux, config):
    """The adapter training starts from: ``--adapter``'s release files (at their own rank) or a new one."""
    from ._pack import TrainableAdapter
    if release:
        start = model_patches.load_adapter(*release_paths(release))
        model_patches.validate_adapter(start, flux)
        return TrainableAdapter.from_adapter(start)
    return TrainableAdapter.for_flux(flux, rank=config.rank, seed=config.seed)


def _resume(trainer, resume: str, out: Path, say) -> None:
    from . import checkpoint as ckpt
    source = out if resume == "latest" else Path(resume)
    if resume == "latest" and not ckpt.state_dirs(out):
        say(f"no state in {out} yet: starting a new run")
    else:
        trainer.load(source)
        say(f"resumed at step {trainer.step} from {source}")


class _Console:
    """The terminal's side of a run: a line per step, and Ctrl-C asking for a stop after the step."""

    def __init__(self, config, say):
        self.config, self.say, self.trainer, self.asked = config, say, None, False
        self.clock = time.perf_counter()

    def on_step(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        stats = self.trainer.statistics or {}
        learning = (f"  grad norm {stats['grad_norm']:.3g}  layers learning {stats['layers_with_gradient']}/"
                    f"{stats['layers']} (+{stats['structural_zeros']} that never can)") if stats else ""
        self.say(f"step {step}/{self.config.steps}  loss {loss:.6f}{learning}  {now - self.clock:.2f} s", flush=True)
        self.clock = now

    def on_signal(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        self.say("\nstopping after this step to save a resumable state (Ctrl-C again to quit without saving)",
                 file=sys.stderr, flush=True)


def _train(trainer, console: _Console, out: Path, say) -> int:
    """Trains to the end or to a Ctrl-C; returns the exit code (0 done, 130 interrupted)."""
    # Ctrl-C (SIGINT; torchrun's SIGTERM to its workers): finish the step, save, exit 130
    handlers = {sig: signal.signal(sig, console.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        trainer.train()
    except KeyboardInterrupt:
        say(f"\ninterrupted mid-step: nothing saved; the last saved state in {out} stays resumable",
            file=sys.stderr, flush=True)
        return 130
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
    path = trainer.save_unsaved()
    if console.asked:
        say(f"interrupted at step {trainer.step}: saved a resumable state in {path}; continue with "
            f"--resume latest --out {out}", file=sys.stderr, flush=True)
        return 130
    say(f"done: step {trainer.step}; release files in {out / f'release-{trainer.step:08d}'}", flush=True)
    return 0


def main(argv=None) -> int:
    try:
        opts = settings(argv)
        return run(opts)
    except RefAny3DError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted before training started; nothing was saved", file=sys.stderr, flush=True)
        return 130
