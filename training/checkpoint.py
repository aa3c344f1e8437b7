"""Saving a training run (docs/method.md §6): the release files and a resumable state, no pickle.

* :func:`save_release`: ``default.safetensors``, ``coord.safetensors`` (diffusers LoRA keys) and
  ``domain_embedder.safetensors``; ``model_patches.load_adapter`` reads them back.
* :func:`save_state` / :func:`load_state`: a folder ``state-<step>/`` holding ``tensors.safetensors``
  (the fp32 trainable tensors and the optimizer's tensors) and ``state.json`` (step, loss history,
  config, the optimizer's other values). Every file and folder is written under a temporary name and
  moved into place with ``os.replace`` (:mod:`training.files`: modes as the umask says), so a crash never
  leaves a half-written state; only the last ``keep`` states are kept. :func:`load_state` checks every
  field before a run trusts it.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
from pathlib import Path

import torch

from ._pack import ADAPTER_NAMES, RELEASE_FILES
from .files import replacing, replacing_dir

EMBEDDER_FILE = "domain_embedder.safetensors"
STATE_PREFIX = "state-"
_STATE_DIR = re.compile(r"^state-(\d+)$")


def _atomic_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    with replacing(path) as tmp:
        safetensors_save(tensors, tmp, metadata)


def safetensors_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    import safetensors.torch
    safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
                                metadata=metadata)


#: every file of an adapter in a folder; a folder holds one adapter, so writing one removes the others' leftovers
ADAPTER_FILES = (RELEASE_FILES["reference"], RELEASE_FILES["domain"], EMBEDDER_FILE, RELEASE_FILES["domain_embedder"])


def adapter_files(folder) -> list[str]:
    """The adapter files present in ``folder`` (none when it does not exist)."""
    folder = Path(folder)
    return [name for name in ADAPTER_FILES if (folder / name).is_file()]


def save_release(adapter, folder, dtype: torch.dtype = torch.float32, write_pth: bool = False) -> dict[str, Path]:
    """Writes the release files of a ``TrainableAdapter`` into ``folder`` (the release itself used
    bf16; fp32 by default; with ``write_pth`` also the release's ``domain_embedder.pth``, a plain state dict
    for the authors' code); returns {"reference", "domain", "domain_embedder"[, "domain_embedder_pth"]} -> path.

    The folder then holds exactly this adapter: every file is written under a temporary name first, an
    adapter file this save does not write (a ``domain_embedder.pth`` of an earlier adapter) is removed, and
    only then are the new files moved into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sds = adapter.to_release_state_dicts(dtype)
    paths = {name: folder / RELEASE_FILES[name] for name in ADAPTER_NAMES}
    paths["domain_embedder"] = folder / EMBEDDER_FILE
    with contextlib.ExitStack() as stack:
        for name, path in paths.items():
            safetensors_save(sds[name], stack.enter_context(replacing(path)), {"format": "pt", "refany3d": name})
        if write_pth:
            paths["domain_embedder_pth"] = folder / RELEASE_FILES["domain_embedder"]
            torch.save(sds["domain_embedder"], stack.enter_context(replacing(paths["domain_embedder_pth"])))
        for stale in set(adapter_files(folder)) - {p.name for p in paths.values()}:
            (folder / stale).unlink()
    return paths


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state dict as tensors (``optim.<param>.<name>``) and JSON values."""
    sd = optimizer.state_dict()
    tensors, values = {}, {}
    for pid, entry in sd["state"].items():
        values[str(pid)] = {}
        for name, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = v
            else:
                values[str(pid)][name] = v
    return tensors, {"state": values, "param_groups": sd["param_groups"]}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The optimizer's state dict from its tensors and JSON values; ValueError for names that are not
    ``optim.<number>.<name>`` or values that are not a table per parameter."""
    state: dict[int, dict] = {}
    for pid, vals in meta["state"].items():
        if not str(pid).isdigit() or not isinstance(vals, dict):
            raise ValueError(f"the optimizer state of parameter {pid!r} is not a table of values")
        state[int(pid)] = dict(vals)
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, pid, name = (key.split(".", 2) + ["", ""])[:3]
            if not pid.isdigit() or not name:
                raise ValueError(f"tensors.safetensors holds {key!r}, not an optimizer tensor name")
            state.setdefault(int(pid), {})[name] = t
        elif not key.startswith("adapter."):
            raise ValueError(f"tensors.safetensors holds {key!r}, neither an adapter nor an optimizer tensor")
    return {"state": state, "param_groups": meta["param_groups"]}


def state_dirs(folder) -> list[Path]:
    """The saved states in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if p.is_dir() and (m := _STATE_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def save_state(folder, step: int, adapter: torch.nn.Module, optimizer: torch.optim.Optimizer,
               losses: list[float], config: dict, keep: int = 3) -> Path:
    """Writes ``folder/state-<step>/`` atomically and removes all but the last ``keep`` states."""
    if int(step) < 0:
        raise ValueError(f"a training state's step is ≥ 0, got {step}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{STATE_PREFIX}{int(step):08d}"
    with replacing_dir(final) as tmp:
        tensors = {f"adapter.{k}": v.detach().float() for k, v in adapter.state_dict().items()}
        opt_tensors, opt_meta = _optimizer_split(optimizer)
        tensors.update(opt_tensors)
        _atomic_safetensors(tensors, tmp / "tensors.safetensors")
        meta = {"format": "refany3d-training-state", "version": 1, "step": int(step), "losses": list(losses),
                "config": config, "optimizer": opt_meta}
        with replacing(tmp / "state.json") as json_tmp:
            json_tmp.write_text(json.dumps(meta, indent=1))
    for old in state_dirs(folder)[:-max(1, int(keep))]:
        shutil.rmtree(old)
    return final


def load_state(path) -> dict:
    """A saved state (a ``state-<step>`` folder, or a folder of them: the latest) as
    ``{"step", "losses", "config", "adapter": state dict, "optimizer": state dict}``. Every field is
    checked (ValueError naming the file and the field): a tampered or damaged state is never trained on."""
    import safetensors.torch
    path = Path(path)
    if not (path / "state.json").is_file():
        states = state_dirs(path)
        if not states:
            raise FileNotFoundError(f"no training state in {path}")
        path = states[-1]
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path / 'state.json'} cannot be read ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "refany3d-training-state":
        raise ValueError(f"{path / 'state.json'} is not a RefAny3D training state")
    problem = _meta_problem(meta, path)
    if problem:
        raise ValueError(f"{path / 'state.json'} is damaged: {problem}")
    try:
        tensors = safetensors.torch.load_file(str(path / "tensors.safetensors"), device="cpu")
    except Exception as e:  # safetensors' own errors: a truncated or damaged file
        raise ValueError(f"{path / 'tensors.safetensors'} cannot be read ({e})") from None
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise ValueError(f"{path / 'tensors.safetensors'} holds non-finite values (NaN or infinity) in {bad}")
    adapter = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
    try:
        optimizer = _optimizer_join(tensors, meta["optimizer"])
    except ValueError as e:
        raise ValueError(f"{path} is damaged: {e}") from None
    return {"step": meta["step"], "losses": meta["losses"], "config": meta["config"], "adapter": adapter,
            "optimizer": optimizer, "path": path}


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _values_problem(values, where: str) -> str | None:
    """A non-finite number anywhere in the JSON ``values`` (NaN, Infinity are valid to Python's json)."""
    if isinstance(values, float) and not math.isfinite(values):
        return f"{where} is {values}"
    if isinstance(values, dict):
        return next((p for k, v in values.items() if (p := _values_problem(v, f"{where}.{k}"))), None)
    if isinstance(values, list):
        return next((p for i, v in enumerate(values) if (p := _values_problem(v, f"{where}[{i}]"))), None)
    return None


def _meta_problem(meta: dict, path: Path) -> str | None:
    step, losses, config, opt = (meta.get(k) for k in ("step", "losses", "config", "optimizer"))
    if meta.get("version") != 1:
        return f"version {meta.get('version')!r} (this pack reads version 1)"
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"'step' must be a whole number ≥ 0, got {step!r}"
    m = _STATE_DIR.match(path.name)
    if m and int(m[1]) != step:
        return f"'step' is {step} but the folder is {path.name}"
    if not isinstance(losses, list) or len(losses) != step or not all(_finite_number(x) for x in losses):
        return f"'losses' must hold one finite number per step ({step}), got {_describe_list(losses)}"
    if not isinstance(config, dict):
        return "'config' is missing"
    lr = config.get("lr")
    if lr is not None and not (_finite_number(lr) and lr >= 0):
        return f"'config.lr' must be a finite number ≥ 0 or null, got {lr!r}"
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        return "'optimizer' must hold 'state' and 'param_groups'"
    for n, group in enumerate(opt["param_groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            return f"'optimizer.param_groups[{n}]' must list its 'params'"
        if not (_finite_number(group.get("lr")) and group["lr"] >= 0):
            return f"the optimizer's learning rate (param group {n}) must be a finite number ≥ 0, got {group.get('lr')!r}"
    return _values_problem(opt, "'optimizer'") or _values_problem(config, "'config'")


def _describe_list(values) -> str:
    if not isinstance(values, list):
        return type(values).__name__
    bad = next((v for v in values if not _finite_number(v)), None)
    return f"{len(values)} values" + (f" including {bad!r}" if bad is not None else "")
