"""Encoded training sets: a dataset turned once into VAE latents and text conditioning (docs/method.md §6).

The loop then needs neither the text encoders nor the VAE in memory. :func:`encode_dataset` writes a
folder:

* ``encoded.json``: format name and version, the sample count, the common latent shapes, the
  context length and channels, the pooled size, each shard's file name, sample count and byte size,
  each sample's name and prompt, and the source dataset's ``describe()`` and ``fingerprint()``;
* ``shard-00000.safetensors`` …: per sample ``<index>.x0_rgb`` [16,h,w], ``<index>.x0_point_map``,
  ``<index>.refs_rgb`` [N,16,hr,wr], ``<index>.refs_point_map``, ``<index>.context`` [L_i,C] (its own
  length) and ``<index>.pooled`` [P]; raw VAE latents (before the model's ``process_latent_in``), float32;
* ``uncond.safetensors``: the empty prompt's ``context`` / ``pooled`` and the black reference's latent.

No pickle anywhere. The folder is written under a temporary name beside it and moved into place
with ``os.replace``, so a cancelled or crashed encoding never looks finished. :class:`EncodedDataset`
reads it back as a sequence of training samples (contexts zero-padded to one common length).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ._pack import RefAny3DError, Unconditional
from .files import file_mode, temp_dir

FORMAT = "refany3d-encoded-dataset"
VERSION = 1
INFO_FILE = "encoded.json"
UNCOND_FILE = "uncond.safetensors"
LATENT_CHANNELS = 16
_LATENT_KEYS = ("x0_rgb", "x0_point_map", "refs_rgb", "refs_point_map")


class EncodingCancelled(RefAny3DError):
    """The cancel hook asked to stop; nothing was written."""


def _shape(t) -> str:
    return "×".join(str(int(s)) for s in t)


def _encode_images(encode_image, images: torch.Tensor, what: str) -> torch.Tensor:
    """``encode_image`` on [B,H,W,3] with its answer checked: [B,16,H/8,W/8], finite; float32 CPU."""
    b, h, w = images.shape[:3]
    out = encode_image(images)
    want = (b, LATENT_CHANNELS, h // 8, w // 8)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = _shape(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RefAny3DError(f"encode_image returned {got} for {what} ({_shape(images.shape)} images); expected "
                            f"{_shape(want)} (raw VAE latents: batch, {LATENT_CHANNELS} channels, 1/8 of the size) "
                            "- is the VAE a FLUX.1 (16-channel) VAE?")
    out = out.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if not torch.isfinite(out).all():
        raise RefAny3DError(f"encode_image returned non-finite values for {what}")
    return out


def _encode_prompt(encode_text, prompt: str, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = encode_text(prompt)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise RefAny3DError(f"encode_text must return (context [L,C], pooled [P] or None); got {type(out).__name__} "
                            f"for {what}")
    context, pooled = out
    if not isinstance(context, torch.Tensor) or context.ndim != 2:
        raise RefAny3DError(f"encode_text returned a context of shape "
                            f"{_shape(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__} "
                            f"for {what}; expected [L, C]")
    if pooled is not None and (not isinstance(pooled, torch.Tensor) or pooled.ndim != 1):
        raise RefAny3DError(f"encode_text returned a pooled vector that is not [P] for {what}")
    context = context.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if pooled is not None:
        pooled = pooled.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return context, pooled


def _image(sample: dict, key: str, what: str) -> torch.Tensor:
    t = sample.get(key)
    if not isinstance(t, torch.Tensor) or t.shape[-1] != 3 or t.ndim not in (3, 4):
        got = _shape(t.shape) if isinstance(t, torch.Tensor) else ("missing" if t is None else type(t).__name__)
        raise RefAny3DError(f"{what}: '{key}' must be float images [..., H, W, 3]; got {got}")
    if t.shape[-3] % 8 or t.shape[-2] % 8:
        raise RefAny3DError(f"{what}: '{key}' is {t.shape[-3]}×{t.shape[-2]} pixels; the VAE needs sides that are "
                            "multiples of 8 (16 for the Flux patches)")
    return t.float()


def _sample_label(i: int, sample: dict) -> str:
    name = sample.get("name") if isinstance(sample, dict) else None
    return f"sample {i} ('{name}')" if name else f"sample {i}"


def is_encoded(folder, fingerprint: str | None = None) -> bool:
    """True when ``folder`` holds a finished, undamaged encoding (of a source with ``fingerprint``, when given)."""
    try:
        info = EncodedDataset(folder).info  # every field, every shard's size and header
    except RefAny3DError:
        return False  # missing, damaged or truncated: encoded again (the new encoding replaces it)
    return fingerprint is None or info["source"].get("fingerprint") == fingerprint


def encode_dataset(dataset, encode_image: Callable[[torch.Tensor], torch.Tensor],
                   encode_text: Callable[[str], tuple], folder, *, shard_size: int = 64,
                   progress: Callable[[int, int], None] | None = None,
                   cancel: Callable[[], bool | None] | None = None) -> EncodedDataset:
    """Encodes every sample of ``dataset`` (raw samples: ``image``, ``point_map`` [H,W,3], ``refs_rgb``,
    ``refs_point_map`` [N,r,r,3], ``prompt``, ``name``) into ``folder`` and returns it opened.

    ``encode_image(images [B,H,W,3] in [0,1]) -> [B,16,H/8,W/8]`` raw VAE latents;
    ``encode_text(prompt) -> (context [L,C], pooled [P] or None)``. ``progress(done, total)`` after each
    sample; ``cancel()`` between samples may raise or return True (then :class:`EncodingCancelled`).
    An existing encoding in ``folder`` is replaced only when the new one is finished; a folder that
    holds anything else is refused."""
    folder = Path(folder)
    total = len(dataset)
    _check_destination(dataset, folder, shard_size)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(folder, ".encoding")
    try:
        if progress is not None:
            progress(0, total)
        sizes, shards = _SetSizes(), _ShardWriter(tmp, int(shard_size))
        for i in range(total):
            if cancel is not None and cancel():
                raise EncodingCancelled(f"encoding cancelled after {i} of {total} samples; nothing was written")
            tensors, record = _encode_sample(dataset[i], i, encode_image, encode_text, sizes)
            shards.add(f"{i:06d}", tensors, record)
            if progress is not None:
                progress(i + 1, total)
        shards.flush()
        context_length = _write_uncond(tmp, encode_image, encode_text, sizes)
        info = {"format": FORMAT, "version": VERSION, "count": total,
                "shapes": {**sizes.shapes, "context_channels": sizes.channels,
                           "context_length": max(sizes.max_len, context_length), "pooled": sizes.pooled},
                "shards": shards.shards, "samples": shards.records,
                "source": {"describe": _describe(dataset), "fingerprint": _fingerprint(dataset)}}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
        os.chmod(tmp / INFO_FILE, file_mode())
        _move_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return EncodedDataset(folder)


def _check_destination(dataset, folder: Path, shard_size: int) -> None:
    """Something to encode, and a folder that is new, empty or an encoding (never a file or other files)."""
    if len(dataset) == 0:
        raise RefAny3DError(f"the dataset is empty ({_describe(dataset)}): nothing to encode")
    if int(shard_size) < 1:
        raise RefAny3DError(f"shard_size must be at least 1, got {shard_size}")
    if folder.exists() and not folder.is_dir():
        raise RefAny3DError(f"cannot encode into {folder}: it is a file")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / INFO_FILE).is_file():
        raise RefAny3DError(f"cannot encode into {folder}: the folder holds other files and is not an encoded "
                            "dataset; choose an empty or new folder")


class _SetSizes:
    """The sizes every sample of a set must share (latents, views, text channels, pooled size), from the
    first sample on, and the longest prompt."""

    def __init__(self):
        self.shapes: dict | None = None
        self.pooled: int | None | str = "unset"
        self.channels, self.max_len = None, 0

    def check_latents(self, label: str, got: dict) -> None:
        if self.shapes is None:
            self.shapes = got
        elif got != self.shapes:
            raise RefAny3DError(
                f"{label}: latents of shape {_shape(got['x0'])} with references {_shape(got['refs'])}, but the "
                f"samples before it have {_shape(self.shapes['x0'])} and {_shape(self.shapes['refs'])}: every sample "
                "of a training set must have the same photo size, number of views and view size")

    def check_text(self, label: str, context: torch.Tensor, pooled: torch.Tensor | None) -> None:
        if self.channels is None:
            self.channels = context.shape[1]
        elif context.shape[1] != self.channels:
            raise RefAny3DError(f"{label}: text context has {context.shape[1]} channels, earlier samples "
                                f"{self.channels}; use one text encoder for the whole set")
        p = None if pooled is None else int(pooled.shape[0])
        if self.pooled == "unset":
            self.pooled = p
        elif p != self.pooled:
            raise RefAny3DError(f"{label}: pooled text vector {p}, earlier samples {self.pooled}; use one text "
                                "encoder for the whole set")
        self.max_len = max(self.max_len, context.shape[0])


def _encode_sample(sample, i: int, encode_image, encode_text, sizes: _SetSizes) -> tuple[dict, dict]:
    """One raw sample checked and encoded: its tensors under their field names, and its record for
    ``encoded.json``."""
    label = _sample_label(i, sample)
    image, pm = _image(sample, "image", label), _image(sample, "point_map", label)
    refs_rgb, refs_pm = _image(sample, "refs_rgb", label), _image(sample, "refs_point_map", label)
    if image.shape != pm.shape:
        raise RefAny3DError(f"{label}: photo {_shape(image.shape[:2])} and point map {_shape(pm.shape[:2])} "
                            "differ in size")
    if refs_rgb.ndim != 4 or refs_rgb.shape != refs_pm.shape:
        raise RefAny3DError(f"{label}: reference views {_shape(refs_rgb.shape)} (RGB) and "
                            f"{_shape(refs_pm.shape)} (point map) must both be [N, r, r, 3]")
    x0 = _encode_images(encode_image, torch.stack([image, pm]), f"{label}'s photo and point map")
    refs = _encode_images(encode_image, torch.cat([refs_rgb, refs_pm]), f"{label}'s reference views")
    n = refs_rgb.shape[0]
    sizes.check_latents(label, {"x0": list(x0.shape[1:]), "refs": [n, *refs.shape[1:]]})
    prompt = str(sample.get("prompt", ""))
    context, pooled = _encode_prompt(encode_text, prompt, label)
    sizes.check_text(label, context, pooled)
    tensors = {"x0_rgb": x0[0], "x0_point_map": x0[1], "refs_rgb": refs[:n], "refs_point_map": refs[n:],
               "context": context}
    if pooled is not None:
        tensors["pooled"] = pooled
    record = {"name": str(sample.get("name", f"sample-{i}")), "prompt": prompt, "tokens": int(context.shape[0])}
    return tensors, record


class _ShardWriter:
    """Samples gathered ``size`` at a time into ``shard-<n>.safetensors`` files in ``folder``, with the
    shards' and samples' records for ``encoded.json``."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size = folder, size
        self.shards, self.records, self.shard = [], [], {}

    def add(self, key: str, tensors: dict, record: dict) -> None:
        self.shard.update({f"{key}.{k}": v for k, v in tensors.items()})
        self.records.append(record)
        if len(self.records) % self.size == 0:
            self.flush()

    def flush(self) -> None:
        if not self.shard:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        write_safetensors(self.shard, self.folder / name)
        self.shards.append({"file": name, "count": len({k.split(".")[0] for k in self.shard}),
                            "bytes": (self.folder / name).stat().st_size})
        self.shard.clear()


def _write_uncond(folder: Path, encode_image, encode_text, sizes: _SetSizes) -> int:
    """The dropouts' replacements, the empty prompt and a black reference view, into ``uncond.safetensors``;
    returns the empty prompt's length."""
    context, pooled = _encode_prompt(encode_text, "", "the empty prompt")
    if context.shape[1] != sizes.channels or (None if pooled is None else int(pooled.shape[0])) != sizes.pooled:
        raise RefAny3DError("encode_text gave the empty prompt other shapes than the samples' prompts")
    r_h, r_w = sizes.shapes["refs"][2] * 8, sizes.shapes["refs"][3] * 8
    black = _encode_images(encode_image, torch.zeros(1, r_h, r_w, 3), "the black reference")[0]
    uncond = {"context": context, "black_reference": black}
    if pooled is not None:
        uncond["pooled"] = pooled
    write_safetensors(uncond, folder / UNCOND_FILE)
    return int(context.shape[0])


def write_safetensors(tensors: dict, path: Path) -> None:
    """A file of the (temporary) encoding folder, with the umask's mode."""
    import safetensors.torch
    safetensors.torch.save_file(tensors, str(path), metadata={"format": FORMAT})
    os.chmod(path, file_mode())


def _describe(dataset) -> str:
    fn = getattr(dataset, "describe", None)
    return str(fn()) if callable(fn) else f"{type(dataset).__name__} of {len(dataset)} samples"


def _fingerprint(dataset) -> str | None:
    fn = getattr(dataset, "fingerprint", None)
    return str(fn()) if callable(fn) else None


def _move_into_place(tmp: Path, folder: Path) -> None:
    """``tmp`` becomes ``folder``; an older encoding there is removed only after the move."""
    old = None
    if folder.exists():
        if any(folder.iterdir()):
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            os.replace(folder, old)
        else:
            folder.rmdir()
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_SHARD_NAME = re.compile(r"^shard-\d{5}\.safetensors$")


def _span(keys: list[str]) -> str:
    return "none" if not keys else (keys[0] if len(keys) == 1 else f"{keys[0]}…{keys[-1]} ({len(keys)})")


def _whole(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _info_problem(info: dict) -> str | None:
    """What is wrong in the fields of an encoded.json, else None."""
    count, shards, samples, shapes = (info.get(k) for k in ("count", "shards", "samples", "shapes"))
    if not _whole(count, 1):
        return f"'count' must be a whole number ≥ 1, got {count!r}"
    if not isinstance(shards, list) or not shards:
        return "'shards' must be a non-empty list"
    for n, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("file"), str) \
                or not _SHARD_NAME.match(shard["file"]):
            got = shard.get("file") if isinstance(shard, dict) else shard
            return (f"shard {n} names {got!r}; shards are files of the folder itself, named "
                    "shard-NNNNN.safetensors")
        if not _whole(shard.get("count"), 1) or not _whole(shard.get("bytes"), 1):
            return f"shard {n} ({shard['file']}) needs a whole 'count' ≥ 1 and 'bytes' ≥ 1"
    if len({s["file"] for s in shards}) != len(shards):
        return "a shard is listed twice"
    in_shards = sum(s["count"] for s in shards)
    if in_shards != count:
        return f"'count' says {count} samples, its shards hold {in_shards}"
    if not isinstance(samples, list) or len(samples) != count or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("prompt"), str)
            for s in samples):
        return f"'samples' must list a name and prompt for each of the {count} samples"
    if not isinstance(shapes, dict):
        return "'shapes' is missing"
    x0, refs = shapes.get("x0"), shapes.get("refs")
    if not (isinstance(x0, list) and len(x0) == 3 and all(_whole(v, 1) for v in x0) and x0[0] == LATENT_CHANNELS):
        return f"'shapes.x0' must be [{LATENT_CHANNELS}, h, w], got {x0!r}"
    if not (isinstance(refs, list) and len(refs) == 4 and all(_whole(v, 1) for v in refs)
            and refs[1] == LATENT_CHANNELS):
        return f"'shapes.refs' must be [views, {LATENT_CHANNELS}, h, w], got {refs!r}"
    for name in ("context_channels", "context_length"):
        if not _whole(shapes.get(name), 1):
            return f"'shapes.{name}' must be a whole number ≥ 1, got {shapes.get(name)!r}"
    if shapes.get("pooled") is not None and not _whole(shapes["pooled"], 1):
        return f"'shapes.pooled' must be a whole number ≥ 1 or null, got {shapes['pooled']!r}"
    if not isinstance(info.get("source"), dict) or not isinstance(info["source"].get("describe"), str):
        return "'source' must describe the dataset it was encoded from"
    return None


def check_info(info: dict, where: str) -> None:
    problem = _info_problem(info)
    if problem:
        raise RefAny3DError(f"{where}: {INFO_FILE} is damaged ({problem}); re-encode the dataset")


class EncodedDataset(Sequence):
    """An encoded training set (see :func:`encode_dataset`) as a sequence of training samples.

    ``ds[i]``: ``x0_rgb``, ``x0_point_map`` [16,h,w], ``refs_rgb``, ``refs_point_map`` [N,16,hr,wr],
    ``context`` [L,C] zero-padded to the common length L, ``pooled`` [P] (absent when the text encoder
    gives none); on the CPU in ``dtype`` (float32 unless :meth:`in_model_space` says otherwise); the
    latents go through ``latent_in`` (e.g. the model's ``model.process_latent_in``) when given.
    ``uncond()``: the dropouts' replacements (same L, same ``latent_in`` and dtype). ``info``: count,
    shapes, the source's describe and fingerprint, names, prompts."""

    def __init__(self, folder, latent_in: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.folder = Path(folder)
        self.latent_in = latent_in
        self.dtype = torch.float32
        info_path = self.folder / INFO_FILE
        if not self.folder.is_dir():
            raise RefAny3DError(f"no encoded dataset at {self.folder}: the folder does not exist (encode a dataset "
                                "into it first)")
        if not info_path.is_file():
            raise RefAny3DError(f"{self.folder} is not an encoded dataset: it has no {INFO_FILE} (encode a dataset "
                                "into it first)")
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise RefAny3DError(f"{info_path} is not valid JSON ({e}); re-encode the dataset") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            found = info.get("format") if isinstance(info, dict) else type(info).__name__
            raise RefAny3DError(f"{info_path} is not a RefAny3D encoded dataset (format {found!r})")
        if info.get("version") != VERSION:
            raise RefAny3DError(f"{info_path} is an encoded dataset of version {info.get('version')}; this pack "
                                f"reads version {VERSION}: re-encode the dataset")
        check_info(info, f"encoded dataset {self.folder}")
        self.info = info
        self._where: list[tuple[Path, str]] = []
        for shard in info["shards"]:
            path = self.folder / shard["file"]
            if not path.is_file():
                raise RefAny3DError(f"encoded dataset {self.folder}: {shard['file']} is missing; re-encode the dataset")
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise RefAny3DError(f"encoded dataset {self.folder}: {shard['file']} has {size} bytes, "
                                    f"{shard['bytes']} were written (truncated or changed); re-encode the dataset")
            keys = [f"{len(self._where) + j:06d}" for j in range(shard["count"])]
            self._check_shard(path, keys, info["shapes"])
            self._where.extend((path, key) for key in keys)
        if not (self.folder / UNCOND_FILE).is_file():
            raise RefAny3DError(f"encoded dataset {self.folder} is incomplete (no {UNCOND_FILE}); re-encode the "
                                "dataset")
        self.context_length = int(info["shapes"]["context_length"])

    def _check_shard(self, path: Path, keys: list[str], shapes: dict) -> None:
        """The shard's header (no tensor data read): exactly the samples ``keys``, each with the shapes of
        encoded.json."""
        want = {"x0_rgb": shapes["x0"], "x0_point_map": shapes["x0"], "refs_rgb": shapes["refs"],
                "refs_point_map": shapes["refs"]}
        header = self._shapes(path)
        found = sorted({k.split(".")[0] for k in header})
        if found != keys:
            raise RefAny3DError(f"encoded dataset {self.folder}: {path.name} holds samples "
                                f"{_span(found)}, {INFO_FILE} says {_span(keys)}; re-encode the dataset")
        for key in keys:
            for name, shape in want.items():
                got = header.get(f"{key}.{name}")
                if got != list(shape):
                    raise RefAny3DError(f"encoded dataset {self.folder}: {path.name}, sample {key}: {name} is "
                                        f"{_shape(got) if got else 'missing'}, {INFO_FILE} says {_shape(shape)}; "
                                        "re-encode the dataset")
            context = header.get(f"{key}.context")
            if context is None or len(context) != 2 or context[1] != shapes["context_channels"] \
                    or context[0] > shapes["context_length"]:
                raise RefAny3DError(f"encoded dataset {self.folder}: {path.name}, sample {key}: context "
                                    f"{_shape(context) if context else 'missing'} does not fit {INFO_FILE} (at most "
                                    f"{shapes['context_length']} tokens of {shapes['context_channels']} channels); "
                                    "re-encode the dataset")

    def _shapes(self, path: Path) -> dict[str, list[int]]:
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # safetensors' own errors: a damaged header
            raise RefAny3DError(f"encoded dataset {self.folder}: {path.name} cannot be read ({e}); "
                                "re-encode the dataset") from None

    def __len__(self) -> int:
        return len(self._where)

    @property
    def names(self) -> list[str]:
        return [s["name"] for s in self.info["samples"]]

    @property
    def prompts(self) -> list[str]:
        return [s["prompt"] for s in self.info["samples"]]

    def describe(self) -> str:
        return (f"encoded dataset {self.folder} ({len(self)} samples, latents {_shape(self.info['shapes']['x0'])}, "
                f"references {_shape(self.info['shapes']['refs'])}) of {self.info['source']['describe']}")

    def _read(self, path: Path, keys: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                present = set(f.keys())
                missing = [k for k in keys if k not in present and k.rsplit(".", 1)[-1] != "pooled"]
                if missing:
                    raise RefAny3DError(f"encoded dataset {self.folder}: {path.name} lacks {missing[0]}; "
                                        "re-encode the dataset")
                return {k: f.get_tensor(k) for k in keys if k in present}
        except RefAny3DError:
            raise
        except Exception as e:  # safetensors' own errors: a damaged file
            raise RefAny3DError(f"encoded dataset {self.folder}: {path.name} cannot be read ({e}); "
                                "re-encode the dataset") from None

    def in_model_space(self, latent_in: Callable[[torch.Tensor], torch.Tensor], dtype=torch.float32) -> EncodedDataset:
        """The same samples as a model trains on them: the latents in its scale (``latent_in``, its
        ``process_latent_in``), every tensor in ``dtype`` (its compute dtype). The command line and the
        Train node both see the encoded set through this; ``self`` is left as it is."""
        view = copy.copy(self)
        view.latent_in, view.dtype = latent_in, dtype
        return view

    def _latent(self, t: torch.Tensor) -> torch.Tensor:
        if self.latent_in is None:
            return t.to(self.dtype)
        batched = t.float() if t.ndim == 4 else t.float()[None]
        out = self.latent_in(batched).to(self.dtype)
        return out if t.ndim == 4 else out[0]

    def _pad(self, context: torch.Tensor) -> torch.Tensor:
        if context.shape[0] == self.context_length:
            return context.to(self.dtype)
        out = context.new_zeros(self.context_length, context.shape[1], dtype=torch.float32)
        out[:context.shape[0]] = context
        return out.to(self.dtype)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} of an encoded dataset of {n}")
        path, key = self._where[i % n]
        raw = self._read(path, [f"{key}.{k}" for k in (*_LATENT_KEYS, "context", "pooled")])
        bad = [k.rsplit(".", 1)[-1] for k, v in raw.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise RefAny3DError(f"encoded dataset {self.folder}: sample {i} ('{self.names[i % n]}') holds non-finite "
                                f"values (NaN or infinity) in its {', '.join(bad)}: the file was damaged; re-encode "
                                "the dataset")
        out = {k: self._latent(raw[f"{key}.{k}"]) for k in _LATENT_KEYS}
        out["context"] = self._pad(raw[f"{key}.context"])
        if f"{key}.pooled" in raw:
            out["pooled"] = raw[f"{key}.pooled"].float().to(self.dtype)
        return out

    def uncond(self) -> Unconditional:
        raw = self._read(self.folder / UNCOND_FILE, ["context", "black_reference", "pooled"])
        pooled = raw.get("pooled")
        return Unconditional(context=self._pad(raw["context"]), pooled=None if pooled is None else pooled.to(self.dtype),
                             black_reference=self._latent(raw["black_reference"]))
