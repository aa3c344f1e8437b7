"""The files a 3D file names beside itself, and how they are read.

OBJ names a material library (``mtllib``) whose ``map_Kd`` lines name the base-colour textures;
glTF/GLB name buffers and images by URI. trimesh reads them through a resolver and drops every one
it cannot read without a word (the asset then renders grey or white). Here:

* ``asset_sources`` lists every file a load reads, those missing included, for cache keys (a file
  uploaded later, or replaced, changes the key);
* ``check_references`` refuses, with a message naming the file, a name that leaves the asset's
  folder, a missing file, and a base-colour texture that cannot be read or is over Pillow's
  decompression-bomb limit;
* ``FolderResolver`` is the resolver trimesh reads through: names are judged as written (``..`` and
  absolute names refused), links inside the folder are followed wherever they point, and anything
  it could not hand over is reported after the load instead of being dropped.

The names are parsed the way trimesh 4.5-5.2 parses them (first ``mtllib`` of the OBJ, the rest of
each ``map_Kd`` line, glTF URIs percent-decoded).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
import struct
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import unquote

from .errors import AssetError

GLB_MAGIC = 0x46546C67
GLB_JSON = 0x4E4F534A
GLB_BIN = 0x004E4942
SCAN_CHUNK = 1 << 20
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


@dataclass(frozen=True)
class Reference:
    """One file named by an asset file."""

    kind: str  # "material library", "texture", "buffer", "image"
    name: str  # as written in the owner
    owner: str  # file name of the file that names it
    path: Path | None  # where it is read from; None when the name is refused
    problem: str | None = None  # why the name is refused (leaves the folder)


# ---------------------------------------------------------------- names


def short(name: str, limit: int = 120) -> str:
    """A name as quoted in messages: very long ones shortened in the middle."""
    return name if len(name) <= limit else f"{name[:70]}…{name[-40:]}"


def reference_path(folder: Path, name: str, owner: str, kind: str, url: bool = False) -> Path:
    """Path of ``name`` (as written in ``owner``) inside ``folder``; AssetError for a name that
    leaves the folder (absolute, a URL, or ``..`` above it). Judged on the name only: links are
    followed wherever they point, like the asset file itself."""
    text = unquote(name) if url else name
    text = text.strip()
    refused = (f"{owner} names the {kind} '{short(name)}', which is outside the asset's folder: refused (only files "
               f"in the asset's own folder or below it are read). Copy the file beside {owner} and name it "
               "by its file name.")
    if not text:
        raise AssetError(f"{owner} has an empty {kind} name")
    if (PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive
            or text[0] in "/\\" or URL_SCHEME.match(text)):
        raise AssetError(refused)
    parts: list[str] = []
    for part in re.split(r"[\\/]+", text):  # exporters on Windows write backslashes
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise AssetError(refused)
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise AssetError(refused)
    return Path(folder).joinpath(*parts)


def is_file(path: Path) -> bool:
    """Path.is_file, False also for names the system refuses (too long, NUL, …)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def make_reference(folder: Path, name: str, owner: str, kind: str, url: bool = False) -> Reference:
    try:
        return Reference(kind, name, owner, reference_path(folder, name, owner, kind, url))
    except AssetError as e:
        return Reference(kind, name, owner, None, str(e))


# ---------------------------------------------------------------- what each format names


def file_key(path: Path):
    st = path.stat()
    return (str(path), st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def obj_material_library(path: Path) -> str | None:
    """The name after the first 'mtllib' of an OBJ (trimesh reads only that one), else None."""
    return _obj_material_library(*file_key(path))


@lru_cache(maxsize=256)
def _obj_material_library(path: str, *stat) -> str | None:
    tail = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(SCAN_CHUNK)
            if not chunk:
                return None
            data = tail + chunk
            at = data.find(b"mtllib")
            if at >= 0:
                line = data[at + 6:]
                while b"\n" not in line:
                    more = f.read(SCAN_CHUNK)
                    if not more or len(line) > 65536:
                        break
                    line += more
                return line.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip() or None
            tail = data[-5:]


def mtl_textures(path: Path) -> tuple[str, ...]:
    """The names of a material library's map_Kd lines (the base-colour textures trimesh reads)."""
    return _mtl_textures(*file_key(path))


@lru_cache(maxsize=256)
def _mtl_textures(path: str, *stat) -> tuple[str, ...]:
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    names = []
    for line in text.splitlines():
        split = line.strip().split()
        if len(split) > 1 and split[0].lower() == "map_kd":
            name = line[line.lower().index("map_kd") + 6:].strip()
            if name not in names:
                names.append(name)
    return tuple(names)


def gltf_json(path: Path) -> dict | None:
    """The JSON of a .gltf or .glb (None when it cannot be read: the load says why)."""
    return _gltf_json(*file_key(path))


@lru_cache(maxsize=64)
def _gltf_json(path: str, *stat) -> dict | None:
    try:
        with open(path, "rb") as f:
            if path.lower().endswith(".glb"):
                head = f.read(20)
                if len(head) < 20:
                    return None
                magic, _, _, length, kind = struct.unpack("<IIIII", head)
                if magic != GLB_MAGIC or kind != GLB_JSON or length > stat[1]:
                    return None
                data = f.read(length)
            else:
                data = f.read()
        tree = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return tree if isinstance(tree, dict) else None


def items(tree: dict, key: str) -> list:
    value = tree.get(key)
    return value if isinstance(value, list) else []


def uri_of(item) -> str | None:
    uri = item.get("uri") if isinstance(item, dict) else None
    return uri if isinstance(uri, str) and uri and not uri.startswith("data:") else None


def base_colour_images(tree: dict) -> list[int]:
    """Indices of the images used as a base-colour texture by some material."""
    textures, images, found = items(tree, "textures"), items(tree, "images"), []
    for material in items(tree, "materials"):
        try:
            index = material["pbrMetallicRoughness"]["baseColorTexture"]["index"]
            source = textures[index]["source"]
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(source, int) and 0 <= source < len(images) and source not in found:
            found.append(source)
    return found


def references(path: Path) -> list[Reference]:
    """Every file that ``path`` names (missing ones included), in the order a load reads them."""
    path = Path(path)
    folder, owner, ext = path.parent, path.name, path.suffix.lower()
    refs: list[Reference] = []
    try:
        if ext == ".obj":
            name = obj_material_library(path)
            if name:
                mtl = make_reference(folder, name, owner, "material library")
                refs.append(mtl)
                if mtl.path is not None and is_file(mtl.path):
                    # trimesh looks the textures up beside the OBJ, whatever folder the library is in
                    refs += [make_reference(folder, tex, mtl.path.name, "texture") for tex in mtl_textures(mtl.path)]
        elif ext in (".gltf", ".glb"):
            tree = gltf_json(path) or {}
            for buffer in items(tree, "buffers"):
                if uri_of(buffer):
                    refs.append(make_reference(folder, uri_of(buffer), owner, "buffer", url=True))
            for image in items(tree, "images"):
                if uri_of(image):
                    refs.append(make_reference(folder, uri_of(image), owner, "image", url=True))
    except OSError:
        pass  # the asset file itself cannot be read: the load says so
    return refs


def asset_sources(path) -> list[Path]:
    """The asset file and every file it names that stays inside its folder, present or not: what a
    cache key must cover so that replacing or adding any of them changes it."""
    path = Path(path)
    return [path] + [r.path for r in references(path) if r.path is not None]


def sources_key(path) -> str:
    """One string that changes when any file of ``asset_sources(path)`` changes, appears or goes."""
    parts = []
    for p in asset_sources(path):
        try:
            st = p.stat()
            parts.append(f"{p}|{st.st_mtime_ns}|{st.st_size}|{st.st_ino}")
        except OSError:
            parts.append(f"{p}|missing")
    return "\n".join(parts)


# ---------------------------------------------------------------- checks before trimesh reads


def shown(path: Path, root: Path | None) -> str:
    """``path`` as the user knows it: relative to the folder the node works in, when known."""
    if root is not None:
        try:
            root = Path(root).absolute()
            return f"{root.name}/{Path(path).absolute().relative_to(root).as_posix()}"
        except ValueError:
            pass
    return str(path)


def check_references(path: Path, root: Path | None = None) -> None:
    """AssetError for the first named file that is refused, missing, or a base-colour texture that
    cannot be read; ``root`` (the input folder) makes the folders in messages relative to it."""
    path = Path(path)
    refs = references(path)
    hints = {"material library": "or delete the 'mtllib' line to render without materials",
             "texture": "or delete the 'map_Kd' line to use the material's Kd colour",
             "buffer": "or export a single-file .glb", "image": "or export a single-file .glb"}
    for ref in refs:
        if ref.problem:
            raise AssetError(ref.problem)
        if not is_file(ref.path):
            raise AssetError(f"{ref.owner} names the {ref.kind} '{short(ref.name)}', which is missing: it was looked "
                             f"for as '{short(ref.path.name)}' in the folder {short(shown(ref.path.parent, root))}. "
                             "Upload it there, "
                             f"{hints[ref.kind]}.")
    for ref in refs:
        if ref.kind == "texture":
            check_texture(ref.path, f"texture '{short(ref.name)}' of {ref.owner}")
    if path.suffix.lower() in (".gltf", ".glb"):
        check_gltf_textures(path)


def check_gltf_textures(path: Path) -> None:
    tree = gltf_json(path)
    if not tree:
        return
    images = items(tree, "images")
    for index in base_colour_images(tree):
        image = images[index]
        if not isinstance(image, dict):
            continue
        label = f"base-colour image {index}" + (f" ('{image['name']}')" if isinstance(image.get("name"), str) else "")
        uri = image.get("uri")
        if image.get("mimeType") == "image/ktx2" or (isinstance(uri, str) and uri.lower().endswith(".ktx2")):
            if ktx2_decoder_missing():
                raise AssetError(f"the {label} of {path.name} is a KTX2 / Basis Universal image"
                                 f"{f' ({short(uri)})' if isinstance(uri, str) and not uri.startswith('data:') else ''}"
                                 ", and its decoder is not installed: pip install alktx2 (wheels for Python 3.11+ on "
                                 "Linux x86_64 and Windows x64), or export the asset with PNG or JPEG textures")
            continue  # decoded (and size-checked) by the glTF reader
        if isinstance(uri, str) and uri.startswith("data:"):
            data = data_uri_bytes(uri)
            if data is None:
                raise AssetError(f"the {label} of {path.name} is a data URI that is not valid base64")
            check_texture(io.BytesIO(data), f"{label} of {path.name}")
        elif isinstance(uri, str) and uri:
            check_texture(reference_path(path.parent, uri, path.name, "image", url=True),
                          f"image '{uri}' of {path.name}")
        elif "bufferView" in image:
            data = buffer_view_bytes(path, tree, image["bufferView"])
            if data is not None:
                check_texture(io.BytesIO(data), f"{label} of {path.name}")


def ktx2_decoder_missing() -> bool:
    try:
        import alktx2  # noqa: F401  (optional: KTX2 textures)
    except ImportError:
        return True
    return False


def data_uri_bytes(uri: str) -> bytes | None:
    at = uri.find("base64,")
    if at < 0:
        return None
    try:
        return base64.b64decode(uri[at + 7:])
    except (binascii.Error, ValueError):
        return None


def buffer_view_bytes(path: Path, tree: dict, view_index) -> bytes | None:
    """The bytes of one bufferView (None when the file's layout is broken: the load says why)."""
    try:
        view = tree["bufferViews"][view_index]
        buffers = items(tree, "buffers") or [{}]  # a GLB may leave its BIN chunk undeclared
        buffer = buffers[view.get("buffer", 0)]
        offset, length = int(view.get("byteOffset", 0)), int(view["byteLength"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError):
        return None
    if offset < 0 or length <= 0:
        return None
    uri = buffer.get("uri") if isinstance(buffer, dict) else None
    try:
        if isinstance(uri, str) and uri.startswith("data:"):
            data = data_uri_bytes(uri)
            return None if data is None else data[offset:offset + length]
        if isinstance(uri, str) and uri:
            source, start = reference_path(path.parent, uri, path.name, "buffer", url=True), 0
        elif path.suffix.lower() == ".glb":
            source, start = path, glb_bin_offset(path)
            if start is None:
                return None
        else:
            return None
        if start + offset + length > source.stat().st_size:  # a lying length: never allocate it
            return None
        with open(source, "rb") as f:
            f.seek(start + offset)
            data = f.read(length)
        return data if len(data) == length else None
    except (OSError, ValueError, OverflowError, AssetError):
        return None


def glb_bin_offset(path: Path) -> int | None:
    """Offset in a .glb of the data of its BIN chunk."""
    with open(path, "rb") as f:
        head = f.read(20)
        if len(head) < 20:
            return None
        json_length = struct.unpack("<I", head[12:16])[0]
        f.seek(20 + json_length)
        chunk = f.read(8)
        if len(chunk) < 8 or struct.unpack("<I", chunk[4:8])[0] != GLB_BIN:
            return None
        return 20 + json_length + 8


def pixel_limit() -> int | None:
    """Pillow refuses images over twice Image.MAX_IMAGE_PIXELS (its decompression-bomb guard)."""
    from PIL import Image
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


def check_texture(source, label: str) -> None:
    """AssetError unless ``source`` (a path or a byte stream) opens as an image within Pillow's limit."""
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source):
                return
    except Image.DecompressionBombError:
        limit = pixel_limit()
        w, h = unchecked_size(source) or (0, 0)
        size = f"{w:,} × {h:,} = {w * h:,} pixels" if w else "larger than the limit"
        raise AssetError(f"the {label} is {size}, over the limit of {limit:,} pixels that the image library "
                         "(Pillow) sets against decompression bombs: it cannot be read. Downscale it (8192 × 8192 "
                         "is plenty for a reference view) and upload it again.") from None
    except Image.UnidentifiedImageError:
        raise AssetError(f"the {label} is not an image that can be read (not a PNG, JPEG or other format Pillow "
                         "knows): save it again as PNG or JPEG") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as e:
        raise AssetError(f"the {label} is not an image that can be read ({type(e).__name__}: {e}): save it "
                         "again as PNG or JPEG") from None


def unchecked_size(source) -> tuple[int, int] | None:
    """(width, height) from an image's header, without Pillow's size guard (which hides it)."""
    from PIL import Image
    Image.init()
    try:
        f = open(source, "rb") if isinstance(source, (str, Path)) else source
    except OSError:
        return None
    try:
        f.seek(0)
        prefix = f.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(prefix):
                continue
            try:
                f.seek(0)
                return tuple(factory(f, "").size)
            except Exception:  # any plugin may fail on a foreign format
                continue
        return None
    finally:
        if f is not source:
            f.close()


# ---------------------------------------------------------------- the resolver trimesh reads through


def folder_resolver(path: Path):
    """A trimesh resolver for the files beside ``path`` (see FolderResolver)."""
    from trimesh.resolvers import FilePathResolver

    class FolderResolver(FilePathResolver):
        """Reads a named file beside the asset, following links; refuses names leaving the folder;
        records what it could not hand over (trimesh would drop it without a word)."""

        def __init__(self, source: Path):
            super().__init__(str(source))
            self.folder = Path(source).parent
            self.owner = Path(source).name
            self.url = Path(source).suffix.lower() in (".gltf", ".glb")
            self.problems: list[str] = []

        def get(self, name):
            try:
                target = reference_path(self.folder, str(name), self.owner, "file", url=self.url)
            except AssetError as e:
                self.problems.append(str(e))
                raise FileNotFoundError(name) from None
            try:
                return target.read_bytes()
            except OSError as e:
                self.problems.append(f"{self.owner} names the file '{short(str(name))}', which cannot be read "
                                     f"({type(e).__name__}: {e.strerror or e})")
                raise FileNotFoundError(name) from None

        def namespaced(self, namespace):
            return folder_resolver(reference_path(self.folder, str(namespace), self.owner, "folder") / "_")

    return FolderResolver(Path(path))


def decode_texture(data: bytes, what: str):
    """The PIL image of a texture's bytes, decoded now; ``what`` names it in the message ("the texture 'x'
    of asset.fbx"). Every decoding failure is an AssetError."""
    import struct

    from PIL import Image
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError:
        raise AssetError(f"{what} is over the size limit of the image library (Pillow): downscale it "
                         "(8192 × 8192 is plenty for a reference view)") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as e:
        raise AssetError(f"{what} cannot be decoded ({type(e).__name__}: {e}): save it again as PNG or JPEG") from None
    return image
