"""A bounded fuzz run over the asset loader (issue 10): ``rendering.load_asset`` on byte-level and
structural corruptions of real GLB / glTF / OBJ(+MTL+PNG) / PLY / STL files from tools/assets_gen.py.

Asserted: only ``rendering.AssetError`` escapes (with a message), no input takes longer than
PER_INPUT_SECONDS, and the process's peak memory grows by less than MEMORY_BUDGET_MB over the run.
The run happens in a fresh process (this file run as a script) so that its peak-memory figure is its
own; the figures (inputs tried, outcomes, distinct messages, slowest input, peak memory) are
printed. Hypothesis draws the corruptions, derandomized, with a fixed example budget.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
#: a quick budget by default; REFANY3D_FUZZ_EXAMPLES=2000 (or more) for a thorough run
EXAMPLES = int(os.environ.get("REFANY3D_FUZZ_EXAMPLES", "200"))
PER_INPUT_SECONDS = 10.0
MEMORY_BUDGET_MB = 1500
RUN_TIMEOUT = 600  # the whole child process: a backstop for a hang inside C code


def test_fuzz_load_asset_only_asset_errors_escape(tmp_path):
    pytest.importorskip("hypothesis", reason="pip install -r requirements-test.txt")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert out.returncode == 0, f"{out.stdout[-4000:]}\n{out.stderr[-6000:]}"
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print("\nfuzz over rendering.load_asset:")
    for key, value in figures.items():
        if key != "messages":
            print(f"  {key}: {value}")
    print("  a sample of the messages:")
    for message in figures["messages"][:12]:
        print(f"    - {message[:160]}")
    assert figures["inputs_tried"] >= EXAMPLES * 0.9
    assert figures["max_seconds_per_input"] < PER_INPUT_SECONDS
    assert figures["peak_memory_growth_mb"] < MEMORY_BUDGET_MB
    assert figures["rejected_with_asset_error"] > 0 and figures["loaded"] > 0
    assert all(m.strip() for m in figures["messages"])


# ---------------------------------------------------------------- the child process


def seed_files(folder: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    """name -> (main file, {file name: bytes}) of real, loadable assets."""
    from PIL import Image
    from tools.assets_gen import (
        GltfPart,
        box,
        marked_quad,
        marked_texture,
        smooth_texture,
        textured_box_glb,
        uv_sphere,
        write_gltf,
        write_obj,
        write_ply,
        write_stl,
    )
    folder.mkdir(parents=True, exist_ok=True)
    v, f, uv = box()
    sv, sf, suv = uv_sphere(4, 8)
    seeds = {}

    def collect(name, main, written):
        seeds[name] = (main, {p.name: p.read_bytes() for p in written})

    glb = textured_box_glb(folder / "box.glb")
    collect("glb", "box.glb", [glb])
    from tools.assets_gen import write_glb
    parts = [GltfPart(sv, sf, uv=suv, texture=smooth_texture(16), factor=(0.5, 0.8, 1.0, 1.0), translation=(1, 0, 0),
                      children=[GltfPart(v, f, colors=np.tile([0.2, 0.4, 0.6], (len(v), 1)), scale=(0.5, 0.5, 0.5))])]
    collect("glb_scene", "scene.glb", [write_glb(folder / "scene.glb", parts)])
    gltf = write_gltf(folder / "quad.gltf", [GltfPart(*marked_quad()[:2], uv=marked_quad()[2],
                                                      texture=marked_texture(16))])
    collect("gltf", "quad.gltf", [gltf, folder / "quad.bin", folder / "quad_tex0.png"])
    obj = write_obj(folder / "crate.obj", v, f, uv, texture=Image.new("RGB", (8, 8), (200, 40, 40)))
    collect("obj", "crate.obj", [obj, folder / "crate.mtl", folder / "crate_kd.png"])
    collect("ply", "box.ply", [write_ply(folder / "box.ply", v, f, np.tile([10, 200, 30], (len(v), 1)))])
    collect("stl", "box.stl", [write_stl(folder / "box.stl", sv, sf)])
    return seeds


SPECIAL_JSON = [None, True, -1, 0, 1, 3, 2**31, 2**32 + 5, 2**63, -(2**63), 1e308, -1e308, 0.5, "", "x",
                "../../../etc/passwd", "/etc/passwd", "data:,", "data:application/octet-stream;base64,!!!",
                "file:///etc/hostname", "%2E%2E/x.bin", [], {}, [0] * 40, {"uri": "../x"}, "a" * 300]
SPECIAL_LINES = {
    ".obj": ["f 1 2 99999", "f 0 0 0", "f -1 -2 -3", "f -99 1 2", "v nan inf -inf", "v 1e308 1e308 1e308",
             "v -1e308 1e308 0", "vt", "vt nan nan", "f 1/999/1 2/2/2 3/3/3", "f 1//1 2//2", "f 1", "f 1 2",
             "mtllib ../../etc/passwd", "mtllib /etc/passwd", "mtllib missing.mtl", "mtllib " + "m" * 300,
             "usemtl nothing", "o", "g", "s 1", "v 1 2", "f a b c", "\x00\x00\x00", "v " + "9" * 400 + " 0 0"],
    ".mtl": ["map_Kd ../crate_kd.png", "map_Kd /etc/passwd", "map_Kd crate.obj", "map_Kd missing.png",
             "map_Kd " + "t" * 300 + ".png", "map_Kd crate_kd.png", "Kd nan 1 1", "Kd 1e308 -5 2", "newmtl",
             "newmtl m0", "map_Kd", "map_Kd -s 1 1 1 crate_kd.png", "d 0", "Ka 1"],
    ".ply": ["element vertex 4294967295", "element vertex 0", "element vertex -5", "element face 999999999",
             "element face 0", "property double x", "property uchar x", "property list int int vertex_indices",
             "property list uchar uint vertex_indices", "format ascii 1.0", "format binary_big_endian 1.0",
             "format binary_little_endian 9.9", "comment", "element", "property", "end_header"],
}
EXTREME_INTS = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF]


def repack_glb(data: bytes, tree) -> bytes:
    """A GLB with ``tree`` as its JSON chunk and the original's remaining chunks."""
    json_length = struct.unpack("<I", data[12:16])[0]
    rest = data[20 + json_length:]
    js = json.dumps(tree).encode()
    js += b" " * (-len(js) % 4)
    body = struct.pack("<II", len(js), 0x4E4F534A) + js + rest
    return struct.pack("<III", 0x46546C67, 2, 12 + len(body)) + body


def json_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from json_paths(v, prefix + (i,))


def set_path(tree, path, value):
    if not path:
        return value
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tree


def png_with_size(data: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR width/height replaced (CRC fixed, so only the size lies)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return data
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF) + data[33:]


def mutations():
    """A Hypothesis strategy: (seed name, file corrupted, what was done, files) for one input."""
    from hypothesis import strategies as st

    @st.composite
    def corrupted(draw):
        seed = draw(st.sampled_from(sorted(SEEDS)))
        main, files = SEEDS[seed]
        files = dict(files)
        target = draw(st.sampled_from([main] * 3 + sorted(files)))  # the main file most often
        data = files[target]
        ext = Path(target).suffix.lower()
        kinds = ["flip", "overwrite", "insert", "delete", "truncate", "duplicate", "int32"]
        if ext in (".glb", ".gltf"):
            kinds += ["json"] * 5
        if ext in SPECIAL_LINES:
            kinds += ["line"] * 5
        if ext == ".stl":
            kinds += ["stl_count"] * 2
        if ext == ".png":
            kinds += ["png_size"] * 3
        kind = draw(st.sampled_from(kinds))
        n = len(data)
        if kind == "flip":
            out = bytearray(data)
            for _ in range(draw(st.integers(1, 16))):
                at = draw(st.integers(0, n - 1))
                out[at] ^= 1 << draw(st.integers(0, 7))
            data = bytes(out)
        elif kind == "overwrite":
            at = draw(st.integers(0, n - 1))
            data = data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at + 64:]
        elif kind == "insert":
            at = draw(st.integers(0, n))
            data = data[:at] + draw(st.binary(min_size=1, max_size=256)) + data[at:]
        elif kind == "delete":
            at = draw(st.integers(0, n - 1))
            data = data[:at] + data[at + draw(st.integers(1, 512)):]
        elif kind == "truncate":
            data = data[:draw(st.integers(0, n - 1))]
        elif kind == "duplicate":
            at = draw(st.integers(0, n - 1))
            data = data[:at] + data[at:at + draw(st.integers(1, 1024))] * draw(st.integers(2, 8)) + data[at:]
        elif kind == "int32":
            at = draw(st.integers(0, max(0, n // 4 - 1))) * 4
            data = data[:at] + struct.pack("<I", draw(st.sampled_from(EXTREME_INTS))) + data[at + 4:]
        elif kind == "json":
            is_glb = ext == ".glb"
            raw = data[20:20 + struct.unpack("<I", data[12:16])[0]] if is_glb else data
            tree = json.loads(raw)
            for _ in range(draw(st.integers(1, 3))):
                paths = list(json_paths(tree))
                path = draw(st.sampled_from(paths[1:] or paths))
                value = draw(st.one_of(st.sampled_from(SPECIAL_JSON), st.integers(-(2**40), 2**40),
                                       st.text(max_size=12)))
                tree = set_path(tree, path, copy.deepcopy(value))  # never share the module's lists and dicts
            data = repack_glb(data, tree) if is_glb else json.dumps(tree).encode()
        elif kind == "line":
            head, sep, body = (data.partition(b"end_header\n") if ext == ".ply" else (data, b"", b""))
            lines = head.decode("utf-8", errors="replace").split("\n")
            for _ in range(draw(st.integers(1, 4))):
                at = draw(st.integers(0, len(lines) - 1))
                special = draw(st.integers(0, 3)) > 0  # mostly the known troublemakers, sometimes any text
                new = draw(st.sampled_from(SPECIAL_LINES[ext])) if special else draw(st.text(max_size=40))
                if draw(st.booleans()):
                    lines[at] = new
                else:
                    lines.insert(at, new)
            data = "\n".join(lines).encode("utf-8", errors="replace") + sep + body
        elif kind == "stl_count":
            data = data[:80] + struct.pack("<I", draw(st.sampled_from(EXTREME_INTS + [1, 7, 100]))) + data[84:]
        elif kind == "png_size":
            w = draw(st.sampled_from([0, 1, 20_000, 100_000, 2**31 - 1, 9_000]))
            h = draw(st.sampled_from([0, 1, 10_000, 100_000, 2**31 - 1, 9_000]))
            data = png_with_size(data, w, h)
        files[target] = data
        return seed, target, kind, files

    return corrupted()


class Hang(BaseException):
    """Raised by the timer when one input runs past PER_INPUT_SECONDS."""


SEEDS: dict = {}


def main(workdir: Path) -> None:
    import resource
    import signal
    import time

    from hypothesis import HealthCheck, Phase, given, settings

    import rendering

    SEEDS.update(seed_files(workdir / "seeds"))
    for main_file, files in SEEDS.values():  # every seed loads as it is (and warms up the imports)
        folder = workdir / "check"
        folder.mkdir(exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        rendering.load_asset(folder / main_file)
        shutil.rmtree(folder)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731  (MB on Linux)
    baseline = rss()
    figures = {"inputs_tried": 0, "loaded": 0, "rejected_with_asset_error": 0, "max_seconds_per_input": 0.0,
               "slowest_input": "", "largest_peak_rise_mb": 0.0, "largest_peak_rise_input": ""}
    messages: dict[str, int] = {}
    timed_out = []

    def on_alarm(signum, frame):
        timed_out.append(True)
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
    @given(mutations())
    def load_corrupted(case):
        seed, target, kind, files = case
        folder = workdir / "case"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        label = f"{seed}: {kind} of {target}"
        figures["inputs_tried"] += 1
        timed_out.clear()
        before = rss()
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, PER_INPUT_SECONDS)
        try:
            asset = rendering.load_asset(folder / files_main(seed))
            asset.description()
            figures["loaded"] += 1
        except rendering.AssetError as e:
            figures["rejected_with_asset_error"] += 1
            messages[str(e)] = messages.get(str(e), 0) + 1
        except Hang:
            raise AssertionError(f"{label}: still loading after {PER_INPUT_SECONDS} s") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - start
        if timed_out:  # the timer fired inside code that swallowed it
            raise AssertionError(f"{label}: ran past {PER_INPUT_SECONDS} s ({seconds:.1f} s)")
        if seconds > figures["max_seconds_per_input"]:
            figures["max_seconds_per_input"], figures["slowest_input"] = round(seconds, 3), label
        rise = rss() - before
        if rise > figures["largest_peak_rise_mb"]:
            figures["largest_peak_rise_mb"], figures["largest_peak_rise_input"] = round(rise, 1), label

    started = time.perf_counter()
    load_corrupted()
    figures["seconds_total"] = round(time.perf_counter() - started, 1)
    figures["distinct_messages"] = len(messages)
    figures["distinct_message_kinds"] = len({re.sub(r"\d[\d,.]*", "N", m) for m in messages})
    figures["peak_memory_mb"] = round(rss(), 1)
    figures["peak_memory_growth_mb"] = round(rss() - baseline, 1)
    figures["messages"] = sorted(messages, key=lambda m: -messages[m])
    print(json.dumps(figures))


def files_main(seed: str) -> str:
    return SEEDS[seed][0]


if __name__ == "__main__":
    main(Path(sys.argv[1]))
