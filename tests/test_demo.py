"""`make demo` (python -m tools.demo) from a clean output folder: it generates its own asset, runs the
render-only workflow, names every missing model file and where it goes, runs the whole graph with
the tiny model as a labelled wiring check, and writes the contact sheet."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ROOT
from tools.demo import REQUIRED, missing_files


def test_demo_without_models_runs_the_wiring_check_and_writes_the_contact_sheet(tmp_path):
    out, models = tmp_path / "demo_output", tmp_path / "empty_models"
    models.mkdir()
    res = subprocess.run([sys.executable, "-m", "tools.demo", "--out", str(out), "--models", str(models)],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = res.stdout
    for rel in ("diffusion_models/flux1-dev.safetensors", "text_encoders/clip_l.safetensors",
                "text_encoders/t5xxl_fp16.safetensors", "vae/ae.safetensors", "refany3d/default.safetensors",
                "refany3d/coord.safetensors", "refany3d/domain_embedder.pth"):
        assert str(models / rel) in text, rel
    assert "render-only workflow: done" in text
    assert "WIRING CHECK" in text and "wiring check (tiny random model): done" in text
    sheet = out / "contact_sheet.png"
    assert (out / "comfyui" / "input" / "3d" / "refany3d_demo_box.glb").is_file()
    img = np.asarray(Image.open(sheet).convert("RGB")).astype(int)
    assert img.shape[1] >= 8 * 192 and img.shape[0] >= 3 * 192
    banner = img[5:30, :200]
    assert (banner[..., 0] > 150).mean() > 0.5 and (banner[..., 1] < 100).mean() > 0.5  # the red wiring-check label
    outputs = list((out / "comfyui" / "output").rglob("*.png"))
    assert len([p for p in outputs if "RefAny3D_preview" in str(p)]) == 24
    assert len([p for p in outputs if "RefAny3D_wiring_check" in str(p)]) == 3


def test_missing_files_reads_the_loaders_lists():
    """The full generation runs only when every loader lists its standard file (in any sub-folder)."""
    def info(files: dict) -> dict:
        out = {}
        for _sub, node, name, _fname in REQUIRED:
            out.setdefault(node, {"input": {"required": {}}})["input"]["required"][name] = [files.get(name, [])]
        out["RefAny3DLoadAdapter"]["input"]["required"] = {
            k: ["COMBO", {"options": v[0]}] for k, v in out["RefAny3DLoadAdapter"]["input"]["required"].items()}
        return out

    assert missing_files(info({})) == [(sub, fname) for sub, _n, _i, fname in REQUIRED]
    everything = {name: ["other.safetensors", f"release/{fname}"] for _s, _n, name, fname in REQUIRED}
    assert missing_files(info(everything)) == []
    everything["clip_name2"] = ["t5xxl_fp8_e4m3fn.safetensors"]
    assert missing_files(info(everything)) == [("text_encoders", "t5xxl_fp16.safetensors")]
