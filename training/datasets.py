"""Training datasets (docs/method.md §6): three sources, one sample.

Every dataset is a Sequence of raw samples, plain dicts (float32 CPU tensors)::

    name            str, unique and stable (folder name, release json stem, "synthetic-0003")
    prompt          str
    image           [size, size, 3] in [0, 1]   the photo: shorter side resized (bilinear) to ``size``,
                                                then centre-cropped
    point_map       [size, size, 3] in [0, 1]   the scene point map, same transform, white where no object
    mask            [size, size] in {0, 1}      the object (point-map alpha > 0.5)
    refs_rgb        [views, ref_size, ref_size, 3]   reference views (release preset)
    refs_point_map  [views, ref_size, ref_size, 3]

Sources:

* :class:`ReleaseDataset`: the release's layout (``meta_data.json``, photos, RGBA scene point maps,
  60-frame mp4 orbit videos decoded with PyAV; references = frames i·⌊60/N⌋).
* :class:`FolderDataset`: one sub-folder per sample (photo, ``prompt.txt``, ``point_map.png``,
  ``asset.*``); references rendered by :func:`rendering.render_views` (release preset) and cached in
  ``<folder>/.refany3d-cache/`` keyed by the asset's file contents and the options.
* :class:`SyntheticDataset`: assets rendered at seeded random poses over backgrounds.

Cheap checks (every file present, photo and point map headers: sizes, alpha) run when a dataset is
opened, so a half-filled folder fails before training; decoding and rendering happen per sample.
Every problem is a :class:`DatasetError` naming the sample and the file.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._pack import RefAny3DError, rendering, sibling
from .files import replacing

log = logging.getLogger(__name__)

SOURCES = ("release", "folder", "synthetic")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
POINT_MAP_EXTENSIONS = (".png", ".webp")
RELEASE_KEYS = ("json", "image", "video", "coord", "pose_coord")
ORBIT_FRAMES = 60  # the release's orbit videos (docs/method.md §1.5)
CACHE_DIR = ".refany3d-cache"
CACHE_VERSION = 1
SIZE_MULTIPLE = 16
MAX_SIZE = 4096


class DatasetError(RefAny3DError):
    """A training dataset (folder, file or option) that cannot be used; the message names what and where."""


# ---------------------------------------------------------------- options and pixels


def check_size(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DatasetError(f"{what} must be a whole number, got {value!r}")
    value = int(value)
    if value < SIZE_MULTIPLE or value > MAX_SIZE or value % SIZE_MULTIPLE:
        raise DatasetError(f"{what} must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and {MAX_SIZE} "
                           f"(the VAE and the 2x2 patches need it), got {value}")
    return value


def check_views(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= ORBIT_FRAMES:
        raise DatasetError(f"views must be a whole number between 1 and {ORBIT_FRAMES} (the release preset picks "
                           f"them from a {ORBIT_FRAMES}-frame orbit), got {value!r}")
    return int(value)


def release_frame_indices(views: int) -> list[int]:
    """Frames k = i·⌊60/N⌋ of the 60-frame orbit (docs/method.md §1.5): 0, 7, …, 49 for N = 8."""
    step = ORBIT_FRAMES // check_views(views)
    return [i * step for i in range(views)]


def resize_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, H, W, C] float -> [B, size, size, C]: shorter side resized to ``size`` (bilinear, antialiased), then
    the centre crop. The same arguments give the same geometry, so aligned images stay aligned."""
    h, w = images.shape[1:3]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = images.permute(0, 3, 1, 2).float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, :, top:top + size, left:left + size].permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def open_image(path: Path, sample: str, what: str):
    """PIL image (header read, pixels not yet decoded); DatasetError naming the sample and the file."""
    from PIL import Image, UnidentifiedImageError
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"sample '{sample}': {what} {path} not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise DatasetError(f"sample '{sample}': {what} {path} is not a readable image ({e})") from e
    return img


def has_alpha(img) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


#: the largest photo (and point map) read, in pixels: training sizes are at most 2048², and decoding a larger
#: picture costs gigabytes of memory for nothing (an 80-Mpx photo took a server from 1.1 GB to 7.5 GB)
MAX_PHOTO_PIXELS = 40_000_000


def check_pair(photo: Path, point_map: Path, sample: str) -> None:
    """Header checks of a photo and its scene point map: readable, same size, at most MAX_PHOTO_PIXELS, alpha
    present. Nothing is decoded."""
    with open_image(photo, sample, "photo") as p, open_image(point_map, sample, "point map") as m:
        for img, path, what in ((p, photo, "photo"), (m, point_map, "point map")):
            if img.size[0] * img.size[1] > MAX_PHOTO_PIXELS:
                raise DatasetError(f"sample '{sample}': the {what} {path.name} is {img.size[0]}x{img.size[1]} "
                                   f"({img.size[0] * img.size[1] / 1e6:.0f} Mpx); at most "
                                   f"{MAX_PHOTO_PIXELS / 1e6:.0f} Mpx are read (training uses at most 2048 px): "
                                   "downscale the photo and its point map together")
        if p.size != m.size:
            raise DatasetError(f"sample '{sample}': the photo {photo.name} is {p.size[0]}x{p.size[1]} but the point "
                               f"map {point_map.name} is {m.size[0]}x{m.size[1]}: they must be pixel-aligned, "
                               "the same size")
        if not has_alpha(m):
            raise DatasetError(f"sample '{sample}': the point map {point_map} has no alpha channel (mode {m.mode}); "
                               "it must be RGBA with alpha = object mask")


def decode(img, mode: str, path: Path, sample: str, what: str) -> np.ndarray:
    try:
        return np.asarray(img.convert(mode))
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"sample '{sample}': {what} {path} does not decode ({e})") from e


def load_pair(photo: Path, point_map: Path, sample: str, size: int) -> dict:
    """The photo and scene point map at training size: image, point_map (white background) and mask."""
    check_pair(photo, point_map, sample)
    with open_image(photo, sample, "photo") as p:
        rgb = decode(p, "RGB", photo, sample, "photo")
    with open_image(point_map, sample, "point map") as m:
        rgba = decode(m, "RGBA", point_map, sample, "point map")
    pm = torch.from_numpy(rgba.copy()).float() / 255.0
    alpha = pm[..., 3:]
    pm = torch.where(alpha > 0, pm[..., :3], torch.ones_like(pm[..., :3]))  # background white before resizing
    both = torch.cat([torch.from_numpy(rgb.copy()).float() / 255.0, pm, alpha], dim=-1)[None]
    both = resize_crop(both, size)[0]
    mask = (both[..., 6] > 0.5).float()
    point = torch.where(mask[..., None] > 0, both[..., 3:6], torch.ones_like(both[..., 3:6]))
    return {"image": both[..., :3].contiguous(), "point_map": point.contiguous(), "mask": mask}


def file_digest(path: Path, cache: dict) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime)."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        cache[key] = h.hexdigest()
    return cache[key]


def files_fingerprint(head: dict, files: list[Path], root: Path) -> str:
    """Stable hash of options and file names, sizes and mtimes."""
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for p in files:
        try:
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- the common interface


class Dataset(Sequence):
    """A sequence of raw training samples (module docstring)."""

    source = ""

    def __init__(self, size: int, ref_size: int, views: int):
        self.size = check_size(size, "size")
        self.ref_size = check_size(ref_size, "ref_size")
        self.views = check_views(views)
        self.names: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}")
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"sample {index} out of range: the dataset has {n} samples")
        return self.sample(i)

    def sample(self, i: int) -> dict:
        raise NotImplementedError

    def options(self) -> dict:
        return {"size": self.size, "ref_size": self.ref_size, "views": self.views}

    def describe(self) -> str:
        where = f" at {self.folder}" if getattr(self, "folder", None) is not None else ""
        return (f"{self.source} dataset{where}: {len(self)} samples, {self.size}px, "
                f"{self.views} references at {self.ref_size}px")

    def fingerprint(self) -> str:
        raise NotImplementedError


def refs_from_uint8(rgb: torch.Tensor, point_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rgb.float() / 255.0, point_map.float() / 255.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


# ---------------------------------------------------------------- (a) the release layout


def decode_frames(path: Path, indices: list[int], sample: str, what: str) -> torch.Tensor:
    """Frames ``indices`` of a video as [N, H, W, 3] uint8 (PyAV); DatasetError naming sample and file."""
    try:
        import av
    except ImportError as e:
        raise DatasetError("reading the release layout's mp4 videos needs PyAV: pip install av") from e
    wanted = set(indices)
    need = max(indices) + 1
    frames: dict[int, np.ndarray] = {}
    count = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"sample '{sample}': the {what} video {path} has no video stream")
            for count, frame in enumerate(container.decode(video=0), start=1):
                if count - 1 in wanted:
                    frames[count - 1] = frame.to_ndarray(format="rgb24")
                if count >= need:
                    break
    except DatasetError:
        raise
    except Exception as e:  # PyAV raises many types (FFmpegError subclasses, OSError, ValueError)
        raise DatasetError(f"sample '{sample}': the {what} video {path} does not decode ({e})") from e
    if count < need:
        raise DatasetError(f"sample '{sample}': the {what} video {path} has {count} frames; the references are "
                           f"frames {', '.join(map(str, indices))} of a {ORBIT_FRAMES}-frame orbit, so it needs at "
                           f"least {need}")
    shapes = {frames[k].shape for k in indices}
    if len(shapes) != 1:
        raise DatasetError(f"sample '{sample}': the {what} video {path} changes frame size mid-stream")
    return torch.from_numpy(np.stack([frames[k] for k in indices]))


def sample_names(files: list[Path], root: Path) -> list[str]:
    """Sample names from their JSON files: the file stems, or their folders' names when the stems repeat
    (samples/<name>/info.json), or else the paths relative to the dataset folder."""
    for names in ([p.stem for p in files], [p.parent.name for p in files]):
        if len(set(names)) == len(names) and all(names):
            return names
    return [p.relative_to(root).with_suffix("").as_posix() if p.is_relative_to(root) else str(p) for p in files]


class ReleaseDataset(Dataset):
    """The release's training layout (docs/method.md §6): ``folder/meta_data.json`` lists
    ``{json, image, video, coord, pose_coord}`` paths relative to the folder."""

    source = "release"

    def __init__(self, folder, size: int = 512, ref_size: int = 512, views: int = 8):
        super().__init__(size, ref_size, views)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"release dataset folder {self.folder} does not exist or is not a folder")
        meta = self.folder / "meta_data.json"
        if not meta.is_file():
            raise DatasetError(f"release dataset {self.folder} has no meta_data.json (the list of samples: "
                               f"{{{', '.join(RELEASE_KEYS)}}} paths relative to the folder)")
        try:
            entries = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f"{meta} is not valid JSON ({e})") from e
        if not isinstance(entries, list):
            raise DatasetError(f"{meta} must hold a list of samples, got {type(entries).__name__}")
        if not entries:
            raise DatasetError(f"{meta} lists no samples: the dataset is empty")
        self.entries: list[dict[str, Path]] = []
        problems = []
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DatasetError(f"{meta}: entry {n} must be an object with keys {', '.join(RELEASE_KEYS)}, "
                                   f"got {type(entry).__name__}")
            label = f"entry {n}" + (f" (json {entry['json']!r})" if isinstance(entry.get("json"), str) else "")
            missing = [k for k in RELEASE_KEYS if not isinstance(entry.get(k), str) or not entry[k]]
            if missing:
                raise DatasetError(f"{meta}: {label} lacks {', '.join(repr(k) for k in missing)} "
                                   f"(every entry needs {', '.join(RELEASE_KEYS)})")
            try:
                paths = {k: rendering.join_inside(entry[k], self.folder, where="the dataset folder")
                         for k in RELEASE_KEYS}
            except rendering.AssetError as e:
                raise DatasetError(f"meta_data.json: {label}: {e}") from None
            self.entries.append(paths)
        first: dict[Path, int] = {}
        for n, paths in enumerate(self.entries):
            if paths["json"] in first:
                raise DatasetError(f"{meta} lists the same sample twice: entries {first[paths['json']]} and {n} "
                                   f"both have json {entries[n]['json']!r}")
            first[paths["json"]] = n
        self.names = sample_names([p["json"] for p in self.entries], self.folder)
        for name, paths in zip(self.names, self.entries):
            gone = [f"{k} {paths[k]}" for k in RELEASE_KEYS if not paths[k].is_file()]
            if gone:
                problems.append(f"'{name}': missing {', '.join(gone)}")
        if problems:
            raise DatasetError(f"release dataset {self.folder}: {len(problems)} of {len(self.entries)} samples "
                               f"have missing files: " + "; ".join(problems[:10]) + ("; …" if len(problems) > 10 else ""))
        for name, paths in zip(self.names, self.entries):
            check_pair(paths["image"], paths["pose_coord"], name)

    def read_json(self, i: int) -> tuple[str, str]:
        name, path = self.names[i], self.entries[i]["json"]
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f"sample '{name}': {path} is not valid JSON ({e})") from e
        if not isinstance(info, dict) or not isinstance(info.get("text"), str):
            raise DatasetError(f"sample '{name}': {path} must hold an object with the prompt under \"text\"")
        item = info.get("item")
        return info["text"], item if isinstance(item, str) else ""

    def sample(self, i: int) -> dict:
        name, paths = self.names[i], self.entries[i]
        prompt, _ = self.read_json(i)
        out = {"name": name, "prompt": prompt}
        out.update(load_pair(paths["image"], paths["pose_coord"], name, self.size))
        indices = release_frame_indices(self.views)
        for key, what in (("refs_rgb", "video"), ("refs_point_map", "coord")):
            frames = decode_frames(paths[what], indices, name, "RGB orbit" if what == "video" else "point-map orbit")
            out[key] = resize_crop(frames.float() / 255.0, self.ref_size)
        return out

    def fingerprint(self) -> str:
        files = [self.folder / "meta_data.json"] + [p[k] for p in self.entries for k in RELEASE_KEYS]
        return files_fingerprint({"source": self.source, **self.options()}, files, self.folder)


# ---------------------------------------------------------------- (b) a folder per sample


def find_one(folder: Path, stems: tuple[str, ...], extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.stem.lower() in stems and p.suffix.lower() in extensions)


class FolderDataset(Dataset):
    """One sub-folder per sample: ``photo.png`` (or .jpg/.jpeg/.webp, or ``image.*``), ``prompt.txt``,
    ``point_map.png`` (RGBA scene point map, alpha = object mask) and ``asset.<ext>`` (any file
    :func:`rendering.load_asset` reads). References are rendered with the release preset and cached in
    ``folder/.refany3d-cache/`` (uint8 safetensors keyed by the asset's bytes and the options). Photos are
    read as stored (no EXIF rotation): the point map must be aligned with the stored pixels."""

    source = "folder"

    def __init__(self, folder, size: int = 512, ref_size: int = 512, views: int = 8):
        SUPPORTED_EXTENSIONS = rendering.SUPPORTED_EXTENSIONS
        UNSUPPORTED_HINT = sibling("rendering.loading").UNSUPPORTED_HINT
        super().__init__(size, ref_size, views)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"dataset folder {self.folder} does not exist or is not a folder")
        subs = sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not subs:
            raise DatasetError(f"dataset folder {self.folder} is empty: it needs one sub-folder per sample with a "
                               "photo (photo.png), prompt.txt, point_map.png and an asset file (asset.glb)")
        asset_exts = tuple(SUPPORTED_EXTENSIONS) + tuple(UNSUPPORTED_HINT)
        self.samples: list[dict[str, Path]] = []
        problems = []
        for sub in subs:
            found = {"photo": find_one(sub, ("photo", "image"), IMAGE_EXTENSIONS),
                     "prompt": find_one(sub, ("prompt",), (".txt",)),
                     "point_map": find_one(sub, ("point_map",), POINT_MAP_EXTENSIONS),
                     "asset": find_one(sub, ("asset",), asset_exts)}
            wanted = {"photo": "photo (photo.png/.jpg/.jpeg/.webp or image.*)", "prompt": "prompt.txt",
                      "point_map": "point_map.png (RGBA scene point map)",
                      "asset": f"asset file (asset{'/'.join(SUPPORTED_EXTENSIONS)})"}
            missing = [wanted[k] for k, v in found.items() if not v]
            several = [f"{len(v)} {k} files ({', '.join(p.name for p in v)})" for k, v in found.items() if len(v) > 1]
            if missing:
                problems.append(f"'{sub.name}': no {', no '.join(missing)}")
            elif several:
                problems.append(f"'{sub.name}': {', '.join(several)}; keep one")
            else:
                self.samples.append({k: v[0] for k, v in found.items()})
        if problems:
            raise DatasetError(f"dataset folder {self.folder}: {len(problems)} of {len(subs)} samples are incomplete: "
                               + "; ".join(problems[:10]) + ("; …" if len(problems) > 10 else ""))
        self.names = [s["photo"].parent.name for s in self.samples]
        for name, s in zip(self.names, self.samples):
            check_pair(s["photo"], s["point_map"], name)
        self.digests: dict = {}

    def cache_path(self, i: int) -> Path:
        """The cache file of sample i's references: named by the asset's bytes (and every file it names) and
        the options, so an edited asset or other options render anew."""
        asset_sources = rendering.asset_sources
        asset = self.samples[i]["asset"]
        h = hashlib.sha256(f"v{CACHE_VERSION}|release|{self.views}|{self.ref_size}".encode())
        for p in asset_sources(asset):
            rel = p.relative_to(asset.parent).as_posix() if p.is_relative_to(asset.parent) else str(p)
            h.update(f"\n{rel}|{file_digest(p, self.digests)}".encode())
        return self.folder / CACHE_DIR / f"refs-{h.hexdigest()[:32]}.safetensors"

    def references(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(refs_rgb, refs_point_map) uint8 of sample i: from the cache, else rendered and cached."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, save_file
        path = self.cache_path(i)
        shape = (self.views, self.ref_size, self.ref_size, 3)
        if path.is_file():
            try:
                t = load_file(str(path))
                if all(k in t and tuple(t[k].shape) == shape and t[k].dtype == torch.uint8 for k in ("rgb", "point_map")):
                    return t["rgb"], t["point_map"]
            except (OSError, SafetensorError, ValueError, RuntimeError):
                pass
            log.warning("RefAny3D dataset: cached references %s are damaged; rendering them again", path)
        rgb, point_map = self.render(i)
        try:  # written under a unique temporary name, then renamed: readers (other ranks, workers) never see half a file
            with replacing(path) as tmp:
                save_file({"rgb": rgb, "point_map": point_map}, str(tmp),
                          metadata={"asset": self.samples[i]["asset"].name})
        except (OSError, SafetensorError) as e:
            log.warning("RefAny3D dataset: cannot cache references in %s (%s); they will be rendered again", path, e)
        return rgb, point_map

    def render(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        AssetError, load_asset, render_views = rendering.AssetError, rendering.load_asset, rendering.render_views
        name, file = self.names[i], self.samples[i]["asset"]
        try:
            asset = load_asset(file)
            views = render_views(asset, num_views=self.views, preset="release", resolution=self.ref_size)
        except AssetError as e:
            raise DatasetError(f"sample '{name}': the asset {file} does not load: {e}") from e
        return to_uint8(views.rgb), to_uint8(views.point_map)

    def sample(self, i: int) -> dict:
        name, s = self.names[i], self.samples[i]
        try:
            prompt = s["prompt"].read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"sample '{name}': cannot read {s['prompt']} ({e})") from e
        if not prompt:
            raise DatasetError(f"sample '{name}': {s['prompt']} is empty: write the prompt that describes the photo")
        out = {"name": name, "prompt": prompt}
        out.update(load_pair(s["photo"], s["point_map"], name, self.size))
        out["refs_rgb"], out["refs_point_map"] = refs_from_uint8(*self.references(i))
        return out

    def fingerprint(self) -> str:
        files = sorted(p for s in self.samples for p in s["photo"].parent.iterdir() if p.is_file())
        return files_fingerprint({"source": self.source, **self.options()}, files, self.folder)


# ---------------------------------------------------------------- (c) synthetic


FOV = 45.0
PITCH_RANGE = (-10.0, 30.0)  # degrees
FILL_RANGE = (0.3, 0.7)  # the asset's largest side, as a fraction of the frame
CROP_RANGE = (0.5, 1.0)  # background crop side, as a fraction of the background's shorter side


class SyntheticDataset(Dataset):
    """Assets rendered at seeded random poses over backgrounds (docs/method.md §6 targets, built in code).

    Sample i shows asset ``i % len(assets)``: a random azimuth, a pitch in PITCH_RANGE, a distance that makes
    the asset span FILL_RANGE of the frame and a small offset, over a random crop of one of ``backgrounds``
    ([B, H, W, 3] or a list of [H, W, 3], values in [0, 1]) or, without them, a smooth random colour
    gradient. Everything is drawn from (seed, i), so the same arguments give the same samples. Rendered
    when asked; each asset's reference views are rendered once and kept in memory.
    """

    source = "synthetic"

    def __init__(self, assets, count: int, seed: int = 0, size: int = 512, ref_size: int = 512, views: int = 8,
                 backgrounds=None, prompt_template: str = "a photo of {name}", names: list[str] | None = None):
        Asset = rendering.Asset
        super().__init__(size, ref_size, views)
        assets = list(assets) if isinstance(assets, (list, tuple)) else [assets]
        if not assets:
            raise DatasetError("a synthetic dataset needs at least one asset")
        for k, a in enumerate(assets):
            if not isinstance(a, Asset):
                raise DatasetError(f"synthetic dataset: asset {k} is a {type(a).__name__}, not a rendering.Asset "
                                   "(load it with rendering.load_asset)")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise DatasetError(f"synthetic dataset: count must be a whole number of samples ≥ 1, got {count!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DatasetError(f"synthetic dataset: seed must be a whole number ≥ 0, got {seed!r}")
        if names is None:
            names = [a.name or f"object {k}" for k, a in enumerate(assets)]
        names = list(names)
        if len(names) != len(assets) or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"synthetic dataset: names must be one string per asset ({len(assets)}), got {names!r}")
        try:
            prompt_template.format(name=names[0])
        except (KeyError, IndexError, ValueError, AttributeError) as e:
            raise DatasetError(f"synthetic dataset: the prompt template {prompt_template!r} must use only "
                               f"{{name}} ({e!r})") from e
        self.assets, self.asset_names, self.prompt_template = assets, names, prompt_template
        self.count, self.seed = int(count), int(seed)
        self.backgrounds = self.check_backgrounds(backgrounds)
        self.names = [f"synthetic-{i:04d}" for i in range(self.count)]
        self.refs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def check_backgrounds(backgrounds) -> list[torch.Tensor]:
        if backgrounds is None:
            return []
        items = list(backgrounds.unbind(0)) if isinstance(backgrounds, torch.Tensor) and backgrounds.ndim == 4 \
            else list(backgrounds) if isinstance(backgrounds, (list, tuple)) else None
        if not items:
            raise DatasetError("synthetic dataset: backgrounds must be images [B, H, W, 3] or a list of [H, W, 3]")
        out = []
        for k, b in enumerate(items):
            if not isinstance(b, torch.Tensor) or b.ndim != 3 or b.shape[-1] < 3 or min(b.shape[:2]) < 1:
                raise DatasetError(f"synthetic dataset: background {k} must be an image [H, W, 3], got "
                                   f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
            b = b[..., :3].detach().float().cpu()
            if not bool(torch.isfinite(b).all()):
                raise DatasetError(f"synthetic dataset: background {k} holds NaN or infinite values")
            out.append(b.clamp(0, 1).contiguous())
        return out

    def rng(self, i: int, stream: int) -> np.random.Generator:
        """The random numbers of sample i: stream 0 the pose, 1 the background (each from (seed, i) alone)."""
        return np.random.default_rng([self.seed, i, stream])

    def background(self, i: int) -> torch.Tensor:
        """Sample i's background [size, size, 3]: a random square crop of one background, or a gradient."""
        rng = self.rng(i, 1)
        s = self.size
        if not self.backgrounds:
            corners = torch.from_numpy(rng.uniform(0.05, 0.95, size=(1, 3, 3, 3))).float()  # 3x3 colour grid
            grid = F.interpolate(corners, size=(s, s), mode="bicubic", align_corners=True)
            return grid[0].permute(1, 2, 0).clamp(0, 1).contiguous()
        b = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        h, w = b.shape[:2]
        side = max(1, round(min(h, w) * rng.uniform(*CROP_RANGE)))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        return resize_crop(b[None, top:top + side, left:left + side], s)[0]

    def camera(self, rng: np.random.Generator):
        """A seeded random camera looking at the asset (rendering frame, inside [-1, 1]^3)."""
        Camera, orbit_camera = rendering.Camera, rendering.orbit_camera
        theta = rng.uniform(0, 2 * math.pi)
        pitch = rng.uniform(*PITCH_RANGE)
        fill = rng.uniform(*FILL_RANGE)
        half = math.tan(math.radians(FOV) / 2)
        radius = 1.0 / (fill * half)  # largest side 2 spans `fill` of the frame height 2·radius·tan(fov/2)
        cam = orbit_camera(theta, pitch, radius, FOV)
        room = max(0.0, radius * half - 1.0) * 0.5  # shift the view a little, keeping the asset inside
        dx, dy = rng.uniform(-room, room, size=2)
        shift = cam.rotation[0] * float(dx) + cam.rotation[1] * float(dy)
        return Camera(eye=cam.eye + shift, rotation=cam.rotation, fov=cam.fov)

    def references(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        AssetError, render_views = rendering.AssetError, rendering.render_views
        if k not in self.refs:
            try:
                v = render_views(self.assets[k], num_views=self.views, preset="release", resolution=self.ref_size)
            except AssetError as e:
                raise DatasetError(f"synthetic dataset: asset '{self.asset_names[k]}' does not render: {e}") from e
            self.refs[k] = (v.rgb, v.point_map)
        return self.refs[k]

    def sample(self, i: int) -> dict:
        AssetError, render_at = rendering.AssetError, rendering.render_at
        k = i % len(self.assets)
        camera = self.camera(self.rng(i, 0))
        background = self.background(i)
        try:
            v = render_at(self.assets[k], camera, self.size, self.size)
        except AssetError as e:
            raise DatasetError(f"sample '{self.names[i]}': asset '{self.asset_names[k]}' does not render: {e}") from e
        mask = v.mask[0]
        image = torch.where(mask[..., None] > 0, v.rgb[0], background)
        refs_rgb, refs_pm = self.references(k)
        return {"name": self.names[i], "prompt": self.prompt_template.format(name=self.asset_names[k]),
                "image": image.contiguous(), "point_map": v.point_map[0].contiguous(), "mask": mask.contiguous(),
                "refs_rgb": refs_rgb.clone(), "refs_point_map": refs_pm.clone()}

    def describe(self) -> str:
        bg = f"{len(self.backgrounds)} backgrounds" if self.backgrounds else "gradient backgrounds"
        return (f"synthetic dataset: {len(self)} samples of {len(self.assets)} assets ({', '.join(self.asset_names[:4])}"
                f"{', …' if len(self.assets) > 4 else ''}), seed {self.seed}, {bg}, {self.size}px, "
                f"{self.views} references at {self.ref_size}px")

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps({"source": self.source, **self.options(), "count": self.count, "seed": self.seed,
                                       "template": self.prompt_template, "names": self.asset_names}).encode())
        for a in self.assets:
            for t in (a.vertices, a.faces, a.colors, a.uv, a.face_texture, *(x for tex in a.textures
                                                                            for x in (tex.image, tex.factor))):
                h.update(b"-" if t is None else t.detach().cpu().contiguous().numpy().tobytes())
        for b in self.backgrounds:
            h.update(str(tuple(b.shape)).encode() + b.numpy().tobytes())
        return h.hexdigest()


# ---------------------------------------------------------------- by name


def load_folder_assets(folder: Path) -> tuple[list, list[str]]:
    """Every 3D file directly in ``folder`` as an Asset, and the file stems as names."""
    SUPPORTED_EXTENSIONS, AssetError, load_asset = rendering.SUPPORTED_EXTENSIONS, rendering.AssetError, rendering.load_asset
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
    if not files:
        raise DatasetError(f"synthetic dataset: {folder} holds no 3D files ({', '.join(SUPPORTED_EXTENSIONS)})")
    assets = []
    for p in files:
        try:
            assets.append(load_asset(p))
        except AssetError as e:
            raise DatasetError(f"synthetic dataset: the asset {p} does not load: {e}") from e
    return assets, [p.stem for p in files]


def load_backgrounds(folder: Path) -> list[torch.Tensor] | None:
    """The images of ``folder`` as [H, W, 3] tensors (None when there is no such folder or it has none)."""
    if not folder.is_dir():
        return None
    out = []
    for p in sorted(x for x in folder.iterdir() if x.is_file() and x.suffix.lower() in IMAGE_EXTENSIONS):
        with open_image(p, "backgrounds", "background") as img:
            out.append(torch.from_numpy(decode(img, "RGB", p, "backgrounds", "background").copy()).float() / 255.0)
    return out or None


def open_dataset(source: str, folder=None, **options) -> Dataset:
    """A dataset by source name: "release" and "folder" read ``folder``; "synthetic" takes ``assets=`` or,
    with a folder, renders every 3D file directly in it (names = file stems; backgrounds from
    ``folder/backgrounds/`` when present) and, without ``count``, makes 8 samples per asset. Other options go
    to the class (size, ref_size, views, ...); an option the source does not take is a DatasetError."""
    classes = {"release": ReleaseDataset, "folder": FolderDataset, "synthetic": SyntheticDataset}
    if source not in classes:
        raise DatasetError(f"unknown dataset source {source!r}: use one of {', '.join(SOURCES)}")
    cls = classes[source]
    if source == "synthetic" and folder is not None and "assets" not in options:
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f"synthetic dataset: asset folder {folder} does not exist or is not a folder")
        options["assets"], names = load_folder_assets(folder)
        options.setdefault("names", names)
        if "backgrounds" not in options:
            options["backgrounds"] = load_backgrounds(folder / "backgrounds")
    elif source != "synthetic":
        if folder is None:
            raise DatasetError(f"the {source} dataset source needs a folder")
        options["folder"] = folder
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"the {source} dataset source has no option {', '.join(unknown)} "
                           f"(it takes {', '.join(accepted)})")
    if source == "synthetic" and "assets" not in options:
        raise DatasetError("the synthetic dataset source needs assets (assets=[...]) or a folder of 3D files")
    if source == "synthetic" and "count" not in options:
        options["count"] = 8 * len(options["assets"])
    return cls(**options)
