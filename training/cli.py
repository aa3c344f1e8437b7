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

#: name -> (argparse keywords, default); None defaults mean "not set"
OPTIONS: dict[str, tuple[dict, object]] = {
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
    "steps": (dict(type=int, metavar="N", help="train until this optimizer step (default 1000)"), 1000),
    "batch": (dict(type=int, metavar="N", help="samples per process and micro-batch (default 1, as the release)"), 1),
    "accumulation": (dict(type=int, metavar="N", help="micro-batches per optimizer step (default 1)"), 1),
    "optimizer": (dict(help="adamw (default) or prodigy (the release's: lr 1, bias correction, safeguard "
                            "warmup; needs the prodigyopt package)"), "adamw"),
    "lr": (dict(metavar="X", type=float, help="learning rate (default 1e-4 for adamw, 1.0 for prodigy)"), None),
    "weight_decay": (dict(metavar="X", type=float, help="decoupled weight decay (default 0.01)"), 0.01),
    "grad_clip": (dict(metavar="X", type=float, help="max gradient norm, 0 = off (default 0.5)"), 0.5),
    "rank": (dict(metavar="R", type=int, help="LoRA rank of a fresh adapter (default 16, the release's); a starting "
                                 "--adapter keeps its own"), None),
    "seed": (dict(metavar="S", type=int, help="seed of the init, the data order and every random draw (default 0)"), 0),
    "save_every": (dict(type=int, metavar="N", help="also save every N steps (default 0: only at the end)"), 0),
    "keep": (dict(type=int, metavar="K", help="keep the last K states (default 3)"), 3),
    "checkpointing": (dict(action=argparse.BooleanOptionalAction,
                           help="gradient checkpointing on every block (default on; off needs far more memory)"),
                      True),
    "p_drop_prompt": (dict(metavar="P", type=float, help="prompt dropout (default 0.1)"), 0.1),
    "p_drop_references": (dict(metavar="P", type=float, help="reference dropout (default 0.1)"), 0.1),
    "precision": (dict(help="precision of the saved release files: fp32 (default) or bf16 (the release's)"), "fp32"),
    "write_pth": (dict(action="store_true", help="also write domain_embedder.pth (a pickled state dict, for the "
                                                 "authors' own code)"), False),
    "base_dtype": (dict(help="weight dtype of the frozen model: default (ComfyUI's choice), bf16, fp16, fp32, "
                             "fp8_e4m3fn or fp8_e5m2 (a 24 GB card)"), "default"),
    "device": (dict(help="auto (default: the GPU of this process when CUDA is available), cpu or cuda"), "auto"),
    "comfyui": (dict(metavar="DIR", help="the ComfyUI folder (default: $COMFYUI_DIR, or the ComfyUI this pack is "
                                         "installed in)"), None),
}
CHOICES = {"optimizer": ("adamw", "prodigy"), "precision": ("fp32", "bf16"), "device": ("auto", "cpu", "cuda"),
           "base_dtype": ("default", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2")}
REQUIRED = ("model", "data", "out")
POSITIVE = ("steps", "batch", "accumulation", "keep")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description="Train a RefAny3D adapter (docs/method.md §6) on an encoded dataset and a "
                                "FLUX.1 model: one process, or many under torchrun (PyTorch DDP).",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config", metavar="FILE", help="settings file (.json or .toml); flags override it")
    for name, (kw, _) in OPTIONS.items():
        kw = dict(kw)
        if name in CHOICES:
            kw["choices"] = CHOICES[name]
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
        if name not in OPTIONS:
            raise RefAny3DError(f"config file {path}: unknown setting {key!r}; known: "
                                f"{', '.join(n.replace('_', '-') for n in OPTIONS)}")
        out[name] = value
    return out


def settings(argv=None) -> dict:
    """Defaults, then the config file, then the flags; checked."""
    args = vars(build_parser().parse_args(argv))
    merged = {name: default for name, (_, default) in OPTIONS.items()}
    if "config" in args:
        merged.update(read_config(args.pop("config")))
    merged.update(args)
    missing = [n for n in REQUIRED if not merged.get(n)]
    if missing:
        raise RefAny3DError(f"missing {', '.join('--' + n for n in missing)} (on the command line or in --config)")
    for name, allowed in CHOICES.items():
        if merged[name] not in allowed:
            raise RefAny3DError(f"--{name.replace('_', '-')} {merged[name]!r} is not one of {', '.join(allowed)}")
    for name in POSITIVE:
        if not isinstance(merged[name], int) or merged[name] < 1:
            raise RefAny3DError(f"--{name.replace('_', '-')} must be a positive whole number, got {merged[name]!r}")
    if merged["rank"] is not None and (not isinstance(merged["rank"], int) or merged["rank"] < 1):
        raise RefAny3DError(f"--rank must be a positive whole number, got {merged['rank']!r}")
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

def run(opts: dict) -> int:
    from . import checkpoint as ckpt
    from .distributed import init_distributed, teardown
    from .encoded import EncodedDataset

    data = EncodedDataset(opts["data"])  # a bad folder fails before the model is loaded
    out = Path(opts["out"])
    resume = opts["resume"]
    if resume and resume != "latest" and not ckpt.state_dirs(resume) and not (Path(resume) / "state.json").is_file():
        raise RefAny3DError(f"--resume {resume}: no training state there (a state-<step> folder or a folder of them)")
    use_comfyui(opts["comfyui"], cpu=True if opts["device"] == "cpu" else None)
    info = init_distributed(opts["device"])
    say = print if info.is_main else (lambda *a, **k: None)
    try:
        from ._pack import RANK, TrainableAdapter

        from .loop import TrainConfig, Trainer
        patcher, flux = load_flux(opts["model"], opts["base_dtype"], info.device)
        data.latent_in = patcher.model.process_latent_in
        if opts["adapter"]:
            start = model_patches.load_adapter(*release_paths(opts["adapter"]))
            model_patches.validate_adapter(start, flux)
            adapter = TrainableAdapter.from_adapter(start)
            if opts["rank"] is not None and opts["rank"] != adapter.rank:
                raise RefAny3DError(f"--rank {opts['rank']} differs from the starting adapter's rank {adapter.rank}; "
                                    "leave --rank out to keep it")
        else:
            adapter = TrainableAdapter.for_flux(flux, rank=opts["rank"] or RANK, seed=opts["seed"])
        config = TrainConfig(seed=opts["seed"], optimizer=opts["optimizer"], lr=opts["lr"],
                             weight_decay=opts["weight_decay"], grad_clip=opts["grad_clip"],
                             accumulation=opts["accumulation"], batch_size=opts["batch"],
                             checkpointing=bool(opts["checkpointing"]), p_drop_prompt=opts["p_drop_prompt"],
                             p_drop_references=opts["p_drop_references"], save_every=opts["save_every"],
                             keep_states=opts["keep"], release_dtype=opts["precision"],
                             write_pth=bool(opts["write_pth"]))
        clock = [time.perf_counter()]
        stop = {"asked": False}

        def on_step(step: int, loss: float) -> None:
            now = time.perf_counter()
            stats = trainer.statistics or {}
            learning = (f"  grad norm {stats['grad_norm']:.3g}  layers learning {stats['layers_with_gradient']}/"
                        f"{stats['layers']} (+{stats['structural_zeros']} that never can)") if stats else ""
            say(f"step {step}/{opts['steps']}  loss {loss:.6f}{learning}  {now - clock[0]:.2f} s", flush=True)
            clock[0] = now

        def on_signal(signum, frame):
            if stop["asked"]:
                raise KeyboardInterrupt
            stop["asked"] = True
            say("\nstopping after this step to save a resumable state (Ctrl-C again to quit without saving)",
                file=sys.stderr, flush=True)

        trainer = Trainer(flux, adapter, data, data.uncond(), config, out_dir=out, rank=info.rank,
                          world_size=info.world_size, on_step=on_step, cancel=lambda: stop["asked"])
        if resume:
            source = out if resume == "latest" else Path(resume)
            if resume == "latest" and not ckpt.state_dirs(out):
                say(f"no state in {out} yet: starting a new run")
            else:
                trainer.load(source)
                say(f"resumed at step {trainer.step} from {source}")
        n_params = sum(p.numel() for p in adapter.parameters())
        say(f"training {n_params:,} parameters (rank {adapter.rank}) on {data.describe()}; "
            f"{info.world_size} process(es) on {info.device}, {config.optimizer}, batch {config.batch_size}"
            f"×{info.world_size}×{config.accumulation}", flush=True)
        # Ctrl-C (SIGINT; torchrun's SIGTERM to its workers): finish the step, save, exit 130
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            trainer.train(opts["steps"])
        except KeyboardInterrupt:
            say(f"\ninterrupted mid-step: nothing saved; the last saved state in {out} stays resumable",
                file=sys.stderr, flush=True)
            return 130
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
        path = trainer.save_unsaved()
        if stop["asked"]:
            say(f"interrupted at step {trainer.step}: saved a resumable state in {path}; continue with "
                f"--resume latest --out {out}", file=sys.stderr, flush=True)
            return 130
        say(f"done: step {trainer.step}; release files in {out / f'release-{trainer.step:08d}'}", flush=True)
        return 0
    finally:
        teardown()


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
