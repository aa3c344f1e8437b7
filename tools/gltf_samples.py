"""Run the Khronos glTF sample models through Load 3D Asset + Render Views (a script, never a test).

Reads a local git copy of the sample-model repository (KhronosGroup/glTF-Sample-Assets or a
snapshot laid out the same way, ``Models/<model>/<variant>/<file>``), extracts each variant's
folder, loads it with ``rendering.load_asset`` and renders 8 release views, and prints one row
per file: rendered / refused (with the message) / failed (any other exception: a bug). Variants
of one model (glTF, glTF-Binary, glTF-Embedded, glTF-Draco, glTF-Quantized…) are compared with
the model's plain ``glTF`` variant: a mask IoU under 0.98 or a mean colour difference over
8/255 marks the row "differs" (a wrong render of one of them). Files missing from the copy (large blobs a snapshot left out) are listed
as such.

    python -m tools.gltf_samples /path/to/repo.git [--res 96] [--only Duck,Avocado]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def git(repo: str, *args: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={repo}", *args], capture_output=True, check=True).stdout


def variants(repo: str, only: set[str] | None):
    """{(model, variant): [paths]} for every Models/<model>/<variant>/ holding a .gltf/.glb."""
    out = defaultdict(list)
    for path in git(repo, "ls-tree", "-r", "--name-only", "HEAD", "Models").decode().splitlines():
        parts = path.split("/")
        if len(parts) >= 4 and (only is None or parts[1] in only):
            out[(parts[1], parts[2])].append(path)
    return {k: v for k, v in out.items() if any(p.lower().endswith((".gltf", ".glb")) for p in v)}


def extract(repo: str, paths: list[str], folder: Path) -> list[str]:
    """Write the files into ``folder`` (relative to the variant); returns those the copy lacks."""
    missing = []
    for path in paths:
        rel = Path(*path.split("/")[3:])
        try:
            data = git(repo, "show", f"HEAD:{path}")
        except subprocess.CalledProcessError:
            missing.append(str(rel))
            continue
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return missing


def main(argv=None) -> int:
    import rendering
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="git directory of the sample-model repository")
    parser.add_argument("--res", type=int, default=96)
    parser.add_argument("--only", help="comma-separated model names")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    rows, masks = [], {}
    for (model, variant), paths in sorted(variants(args.repo, only).items()):
        with tempfile.TemporaryDirectory() as tmp:
            missing = extract(args.repo, paths, Path(tmp))
            for path in sorted(Path(tmp).rglob("*")):
                if path.suffix.lower() not in (".gltf", ".glb"):
                    continue
                start = time.perf_counter()
                if missing:
                    rows.append((model, variant, path.name, "not in copy", f"{len(missing)} files missing "
                                 f"(e.g. {missing[0]})", 0.0))
                    continue
                try:
                    asset = rendering.load_asset(path)
                    views = rendering.render_views(asset, num_views=8, resolution=args.res)
                    status, note = "rendered", "; ".join(asset.warnings)[:160]
                    blank = rendering.check_coverage(views)  # AssetError (refused) when every view is blank
                    if blank:
                        note = f"{blank}; {note}"
                    masks[(model, variant, path.name)] = (views.mask.bool(), views.rgb)
                except rendering.AssetError as e:
                    status, note = "refused", str(e)[:200]
                except Exception as e:  # a bug: reported, the run goes on
                    status, note = "FAILED", f"{type(e).__name__}: {e}"[:200]
                rows.append((model, variant, path.name, status, note, time.perf_counter() - start))
    by_model = defaultdict(dict)
    for (model, variant, _), seen in masks.items():
        by_model[model][variant] = seen
    final = []
    for model, variant, name, status, note, seconds in rows:
        plain = by_model[model].get("glTF")
        seen = masks.get((model, variant, name))
        if status == "rendered" and plain is not None and variant != "glTF" and seen is not None:
            (mask, rgb), (plain_mask, plain_rgb) = seen, plain
            both = mask & plain_mask
            iou = both.sum().item() / max((mask | plain_mask).sum().item(), 1)
            colour = float((rgb[both] - plain_rgb[both]).abs().mean()) * 255 if both.any() else 0.0
            if iou < 0.98 or colour > 8:
                status = "differs"
                note = f"mask IoU {iou:.3f}, mean colour difference {colour:.1f}/255 against the glTF variant; " + note
        final.append((model, variant, name, status, note, seconds))
    print("| model | file | status | note | s |\n|---|---|---|---|---|")
    for model, variant, name, status, note, seconds in final:
        print(f"| {model} | {variant}/{name} | {status} | {note.replace('|', '/')} | {seconds:.1f} |")
    counts = defaultdict(int)
    for row in final:
        counts[row[3]] += 1
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
