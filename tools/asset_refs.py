"""The files a 3D asset needs besides itself, found by reading its references (standard library only).

An OBJ names its material libraries (``mtllib``), an MTL names texture maps (``map_Kd``, ``bump``…,
options such as ``-s 1 1 1`` before the file name), a glTF names its buffers and images by URI (a
GLB may too), a USD layer names textures and other layers by asset path (a USDZ holds them inside). The headless client uploads these sidecars with the asset, into the same folder, so
that the relative references still resolve on the server.

Rules: a reference is a path relative to the asset's folder (an MTL's maps: relative to the MTL's
folder, else to the asset's, as loaders differ); ``data:`` URIs are inline and need nothing; an
absolute path, a URL, or a path that leaves the asset's folder is refused; a referenced file that
does not exist is an error. A file that cannot be parsed (damaged GLB, glTF that is not JSON) has no
readable references: the server's loader reports it.

    python -m tools.asset_refs model.obj      # lists the files that would be uploaded
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

# the extensions RefAny3D Load 3D Asset reads (rendering.SUPPORTED_EXTENSIONS; kept equal by a test,
# duplicated because the client runs without the pack's libraries)
SUPPORTED_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off", ".usd", ".usda", ".usdc", ".usdz", ".fbx")
UNSUPPORTED_HINT = {".blend": "export the asset from Blender as GLB (File > Export > glTF 2.0)",
                    ".3ds": "3DS is not supported: export the asset as GLB or OBJ",
                    ".dae": "COLLADA is not supported: export the asset as GLB or OBJ"}

# MTL statements that name a texture file (besides every map_*)
MTL_MAP_KEYS = {"bump", "disp", "decal", "refl", "norm"}
# MTL texture options and how many arguments each takes at most (numbers, or on/off); the words
# after -imfchan (r g b m l z) and -type (sphere, cube_top…) are taken whatever they are
MTL_OPTIONS = {"-blendu": 1, "-blendv": 1, "-cc": 1, "-clamp": 1, "-bm": 1, "-boost": 1, "-texres": 1,
               "-imfchan": 1, "-type": 1, "-mm": 2, "-o": 3, "-s": 3, "-t": 3}
MTL_WORD_OPTIONS = {"-imfchan", "-type"}
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class AssetInputError(ValueError):
    """A local asset the client cannot send as it is: the message says what and what to do."""


@dataclass(frozen=True)
class AssetBundle:
    """An asset and its sidecars: ``files`` maps each relative path (POSIX, the asset's own name
    first) to the local file."""

    asset: Path
    files: dict[str, Path]

    @property
    def sidecars(self) -> list[str]:
        return [rel for rel in self.files if rel != self.asset.name]

    def digest(self) -> str:
        """sha256 over every file's relative path and bytes: equal content, equal digest."""
        h = hashlib.sha256()
        for rel in sorted(self.files):
            data = self.files[rel].read_bytes()
            h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0")
            h.update(data)
        return h.hexdigest()


def check_extension(path: Path) -> None:
    ext = path.suffix.lower()
    if ext in SUPPORTED_EXTENSIONS:
        return
    hint = UNSUPPORTED_HINT.get(ext, "")
    raise AssetInputError(f"{path.name}: unsupported 3D file type '{ext or '(none)'}'"
                          f"{': ' + hint if hint else ''} (RefAny3D reads {' '.join(SUPPORTED_EXTENSIONS)})")


def collect(asset: str | Path) -> AssetBundle:
    """The asset and every file it references, checked: exists, supported type, inside its folder."""
    asset = Path(asset)
    if not asset.exists():
        raise AssetInputError(f"asset file {asset} does not exist")
    if not asset.is_file():
        raise AssetInputError(f"asset {asset} is not a file")
    check_extension(asset)
    root = asset.resolve().parent
    files: dict[str, Path] = {asset.name: asset}
    ext = asset.suffix.lower()
    if ext == ".obj":
        for mtl_rel in obj_mtllibs(asset, root):
            mtl = _add(files, root, mtl_rel, asset.name)
            for tex_rel in mtl_maps(mtl):
                _add(files, root, _relative_to_mtl(root, mtl_rel, tex_rel), mtl_rel)
    elif ext in (".gltf", ".glb"):
        for uri in gltf_uris(asset):
            _add(files, root, uri, asset.name)
    elif ext in (".usd", ".usda", ".usdc"):  # a .usdz carries its files inside
        layers = [(asset, asset.name)]
        while layers:  # layers it references name files of their own, relative to themselves
            layer, layer_rel = layers.pop()
            for rel in usd_asset_paths(layer):
                rel = _relative_to_mtl(root, layer_rel, rel) if "/" in layer_rel else rel
                known = safe_relative(rel, layer_rel) in files
                path = _add(files, root, rel, layer_rel)
                if not known and path.suffix.lower() in (".usd", ".usda", ".usdc"):
                    layers.append((path, safe_relative(rel, layer_rel)))
    elif ext == ".fbx":
        for name in fbx_texture_files(asset, root):
            files[name] = root / name
    return AssetBundle(asset, files)


def _add(files: dict, root: Path, rel: str, referrer: str) -> Path:
    """Checks one reference and records it; returns the local path."""
    rel_norm = safe_relative(rel, referrer)
    path = root / rel_norm
    if not path.is_file():
        raise AssetInputError(f"{referrer} references '{rel}', which is missing: expected at {path}. Put the "
                              f"file there (or remove the reference) and run again")
    try:
        path.resolve().relative_to(root)
    except ValueError:
        raise AssetInputError(f"{referrer} references '{rel}', which leads out of the asset's folder "
                              f"({root}) through a link: copy the file into the folder") from None
    files.setdefault(rel_norm, path)
    return path


def safe_relative(rel: str, referrer: str) -> str:
    """``rel`` as a normalised relative POSIX path inside the asset's folder, else AssetInputError."""
    text = rel.strip().replace("\\", "/")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise AssetInputError(f"{referrer} references '{rel}', a URL: download the file into the asset's "
                              "folder and reference it by a relative path")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise AssetInputError(f"{referrer} references '{rel}' by an absolute path: copy the file into the "
                              "asset's folder and reference it by a relative path")
    norm = os.path.normpath(text).replace("\\", "/")
    if norm in (".", "") or norm == ".." or norm.startswith("../"):
        raise AssetInputError(f"{referrer} references '{rel}', which is outside the asset's folder: copy "
                              "the file into the folder (or a sub-folder) and reference it from there")
    return PurePosixPath(norm).as_posix()


def _relative_to_mtl(root: Path, mtl_rel: str, tex_rel: str) -> str:
    """A map's path relative to the asset's folder: beside the MTL if it is there, else as written
    (relative to the asset's folder, as trimesh reads it)."""
    mtl_dir = PurePosixPath(mtl_rel).parent
    beside = (mtl_dir / tex_rel.strip().replace("\\", "/")).as_posix()
    if str(mtl_dir) != "." and (root / beside).is_file():
        return beside
    return tex_rel


def _lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return text.replace("\\\r\n", "").replace("\\\n", "").splitlines()


def obj_mtllibs(obj: Path, root: Path) -> list[str]:
    """The material libraries an OBJ names: each ``mtllib`` line's rest is one file name when such a
    file exists (names with spaces), else a list of names separated by white space."""
    found: list[str] = []
    for line in _lines(obj):
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or parts[0] != "mtllib":
            continue
        rest = parts[1].split("#", 1)[0].strip()
        if not rest:
            continue
        names = [rest] if (root / rest.replace("\\", "/")).is_file() or len(rest.split()) == 1 else rest.split()
        found += [n for n in names if n not in found]
    return found


def mtl_maps(mtl: Path) -> list[str]:
    """The texture files an MTL names (``map_*``, ``bump``, ``disp``, ``decal``, ``refl``, ``norm``),
    with the statements' options (``-s 1 1 1``, ``-clamp on``, ``-bm 0.5``…) skipped."""
    found: list[str] = []
    for line in _lines(mtl):
        tokens = line.split("#", 1)[0].split() if not line.lstrip().startswith("#") else []
        if len(tokens) < 2:
            continue
        key = tokens[0].lower()
        if not (key.startswith("map_") or key in MTL_MAP_KEYS):
            continue
        name = map_file_name(tokens[1:])
        if name and name not in found:
            found.append(name)
    return found


def map_file_name(args: list[str]) -> str | None:
    """The file name at the end of a texture statement's arguments, options skipped."""
    i = 0
    while i < len(args) - 1 and args[i].startswith("-") and not _NUMBER.match(args[i]):
        option = args[i].lower()
        limit = MTL_OPTIONS.get(option, 3)
        i += 1
        taken = 0
        while taken < limit and i < len(args) - 1 and (
                option in MTL_WORD_OPTIONS or _NUMBER.match(args[i]) or args[i].lower() in ("on", "off")):
            i += 1
            taken += 1
    name = " ".join(args[i:]).strip()
    return name or None


def gltf_uris(path: Path) -> list[str]:
    """The external files a .gltf (or a .glb's JSON chunk) names: buffers[].uri and images[].uri,
    percent-decoded, ``data:`` URIs skipped. An unreadable file gives no references."""
    doc = _gltf_json(path)
    found: list[str] = []
    if not isinstance(doc, dict):
        return found
    for kind in ("buffers", "images"):
        items = doc.get(kind)
        for item in items if isinstance(items, list) else []:
            uri = item.get("uri") if isinstance(item, dict) else None
            if not isinstance(uri, str) or not uri or uri.startswith("data:"):
                continue
            name = unquote(uri)
            if name not in found:
                found.append(name)
    return found


USD_TEXT_PATH = re.compile(r"@([^@\n]+)@")
# a crate (binary) file keeps asset paths as plain strings: those naming a file a stage reads
USD_CRATE_PATH = re.compile(rb"[A-Za-z0-9_./ -]+\.(?:png|jpe?g|exr|hdr|tga|bmp|tiff?|webp|usd[acz]?)(?![A-Za-z0-9])",
                            re.IGNORECASE)


def usd_asset_paths(path: Path) -> list[str]:
    """The files a .usd/.usda/.usdc names beside itself (textures, layers it references), as
    written: ``@…@`` asset paths of a text layer, file-name strings of a binary (crate) one."""
    data = path.read_bytes()
    if data.startswith(b"PXR-USDC"):
        names = [m.group(0).decode("utf-8", "replace").strip() for m in USD_CRATE_PATH.finditer(data)]
    else:
        names = USD_TEXT_PATH.findall(data.decode("utf-8", "replace"))
    found: list[str] = []
    for name in names:
        name = name.strip()
        if name.startswith("./"):
            name = name[2:]
        if name and name not in found:
            found.append(name)
    return found


def fbx_texture_files(path: Path, root: Path) -> list[str]:
    """Texture files an FBX names that lie beside it (exporters write the path on their own machine,
    so the reader looks the file up by its name beside the FBX). A named texture that is neither
    beside it nor embedded (no media ``Content`` in the file) is an AssetInputError."""
    data = path.read_bytes()
    names = [m.group(0).decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1].rsplit("::", 1)[-1]
             for m in FBX_TEXTURE_NAME.finditer(data)]
    found, missing = [], []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        (found if (root / name).is_file() else missing).append(name)
    if missing and b"Content" not in data:
        raise AssetInputError(f"{path.name} references the texture '{missing[0]}', which is missing: put it beside "
                              f"{path.name} (expected at {root / missing[0]}), or export the FBX with embedded media")
    return found


FBX_TEXTURE_NAME = re.compile(rb"[A-Za-z0-9_.:\\/ -]+\.(?:png|jpe?g|tga|bmp|tiff?|webp)(?![A-Za-z0-9])", re.IGNORECASE)


def _gltf_json(path: Path):
    data = path.read_bytes()
    try:
        if path.suffix.lower() == ".glb":
            if len(data) < 20 or data[:4] != b"glTF":
                return None
            length, kind = struct.unpack_from("<II", data, 12)
            if kind != 0x4E4F534A or 20 + length > len(data):
                return None
            data = data[20:20 + length]
        return json.loads(data.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError, struct.error):
        return None


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tools.asset_refs ASSET", file=sys.stderr)
        return 2
    try:
        bundle = collect(args[0])
    except AssetInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for rel, path in bundle.files.items():
        print(f"{rel}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
