"""The command line (issue 11): ``python -m training`` in a subprocess on a stock-loadable tiny Flux file
(loaded by ComfyUI's own ``load_diffusion_model``) and a tiny encoded dataset: release files that
``load_adapter`` reads, kept states, resume through a TOML config, Ctrl-C saving a resumable
state, and clear errors for bad settings.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_patches import load_adapter
from tools import tiny_models as tiny
from tools.comfy_env import default_comfy_dir
from training import encode_dataset, load_state
from training.cli import main, settings

ROOT = Path(__file__).resolve().parent.parent
IMAGE_PROJ = torch.randn(16, 3, generator=torch.Generator().manual_seed(3))
TEXT_PROJ = torch.randn(24, 4096, generator=torch.Generator().manual_seed(0))


class ListDataset(list):
    def describe(self) -> str:
        return f"test dataset of {len(self)} samples"

    def fingerprint(self) -> str:
        return f"test-{len(self)}"


def raw_sample(i, size=16):
    g = torch.Generator().manual_seed(100 + i)
    return {"name": f"s{i}", "prompt": f"a photo of object {i}", "image": torch.rand(size, size, 3, generator=g),
            "point_map": torch.rand(size, size, 3, generator=g), "mask": torch.ones(size, size),
            "refs_rgb": torch.rand(1, size, size, 3, generator=g), "refs_point_map": torch.rand(1, size, size, 3,
                                                                                              generator=g)}


def encode_image(images):
    """A stand-in for the VAE: 8×8 average pool, 3 -> 16 channels by a fixed random projection."""
    pooled = torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2), 8)
    return torch.einsum("oc,bchw->bohw", IMAGE_PROJ, pooled)


def encode_text(prompt):
    """A stand-in for T5 + CLIP at FLUX.1's sizes: [L, 4096] context, [768] pooled."""
    g = torch.Generator().manual_seed(len(prompt))
    return torch.randn(len(prompt.split()) + 1, 24, generator=g) @ TEXT_PROJ / 5, torch.randn(768, generator=g)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    model = tiny.write_flux_checkpoint(base / "flux.safetensors")  # 3072 wide, 1 + 1 blocks: what the loader detects
    encode_dataset(ListDataset(raw_sample(i) for i in range(3)), encode_image, encode_text, base / "enc")
    return base, model


def cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "COMFYUI_DIR": str(default_comfy_dir())}
    return subprocess.Popen([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_train_save_interrupt_resume(files, tmp_path):
    base, model = files
    out = tmp_path / "out"
    common = ["--model", model, "--data", base / "enc", "--out", out, "--device", "cpu", "--lr", "1e-3"]
    proc = cli([*common, "--steps", 2, "--rank", 2, "--save-every", 1, "--keep-states", 1, "--write-pth",
                "--release-dtype", "bf16", "--seed", 3])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr
    assert "step 1/2  loss" in stdout and "step 2/2  loss" in stdout and "done: step 2" in stdout
    assert [p.name for p in sorted(out.glob("state-*"))] == ["state-00000002"]  # --keep-states 1
    release = out / "release-00000002"
    for emb in ("domain_embedder.safetensors", "domain_embedder.pth"):
        adapter = load_adapter(release / "default.safetensors", release / "coord.safetensors", release / emb)
        assert adapter.hidden_size == 3072
        down, up = adapter.loras["reference"]["double_blocks.0.img_attn.qkv"]
        assert down.shape == (3 * 2, 3072) and float(up.abs().max()) > 0  # rank 2, trained
    first = load_state(out)
    assert first["step"] == 2 and len(first["losses"]) == 2 and first["config"]["seed"] == 3

    # a new run into the same --out is refused (nothing touched) unless it says --overwrite
    before = {q.relative_to(out): q.read_bytes() for q in out.rglob("*") if q.is_file()}
    proc = cli([*common, "--steps", 1, "--rank", 2])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "already holds a training run" in stderr and "--overwrite" in stderr, stderr
    assert {q.relative_to(out): q.read_bytes() for q in out.rglob("*") if q.is_file()} == before

    # resume from a TOML config (flags override it), then Ctrl-C: the step finishes and a state is saved
    config = tmp_path / "run.toml"
    config.write_text(f'model = "{model}"\ndata = "{base / "enc"}"\nout = "{out}"\nsteps = 5\nseed = 3\n'
                      f'rank = 2\nlr = 1e-3\nresume = "latest"\nrelease_dtype = "bf16"\n')
    proc = cli(["--config", config, "--steps", 1000, "--device", "cpu"])
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 4/1000"):
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=300)
    stdout = "".join(lines) + stdout
    assert proc.returncode == 130, stdout + stderr
    assert "resumed at step 2" in stdout and "step 3/1000" in stdout and "step 1/" not in stdout
    assert "saved a resumable state" in stderr and "--resume latest" in stderr
    state = load_state(out)
    assert state["step"] in (4, 5) and len(state["losses"]) == state["step"]
    assert state["losses"][:2] == first["losses"]  # the resumed run continued the loss history
    assert (out / f"release-{state['step']:08d}" / "default.safetensors").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_settings_merge_config_and_flags(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": "m.safetensors", "data": "d", "out": "o", "steps": 7, "save-every": 2,
                               "checkpointing": False}))
    opts = settings(["--config", str(cfg), "--steps", "9", "--batch-size", "2"])
    assert (opts["steps"], opts["save_every"], opts["batch_size"], opts["checkpointing"]) == (9, 2, 2, False)
    assert opts["optimizer"] == "adamw" and opts["rank"] == 16 and opts["release_dtype"] == "fp32"
    assert settings(["--config", str(cfg), "--checkpointing"])["checkpointing"] is True


@pytest.mark.parametrize("args, config, message", [
    (["--model", "m", "--out", "o"], None, "missing --data"),
    (["--model", "m", "--out", "o", "--data", "{tmp}/nothing"], None, "no encoded dataset at .*nothing: the folder "
                                                                      "does not exist"),
    (["--config", "{tmp}/c.json"], {"model": "m", "data": "d", "out": "o", "optimizer": "sgd"},
     "--optimizer 'sgd' is not one of adamw, prodigy"),
    (["--config", "{tmp}/c.json"], {"model": "m", "data": "d", "out": "o", "learning_rate": 1},
     "unknown setting 'learning_rate'"),
    (["--config", "{tmp}/c.json", "--steps", "0"], {"model": "m", "data": "d", "out": "o"},
     "--steps must be a positive whole number"),
    (["--config", "{tmp}/missing.toml"], None, "config file .*missing.toml does not exist"),
])
def test_bad_settings_are_clear_errors(tmp_path, capsys, args, config, message):
    if config is not None:
        (tmp_path / "c.json").write_text(json.dumps(config))
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert re.search(message, err), err


def test_unknown_flag_value_and_bad_model_file(files, tmp_path, capsys):
    base, _ = files
    with pytest.raises(SystemExit) as e:
        main(["--optimizer", "sgd"])
    assert e.value.code == 2 and "invalid choice: 'sgd'" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "absent.safetensors"), "--data", str(base / "enc"), "--out",
                 str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "model file" in capsys.readouterr().err
    assert main(["--model", str(base / "enc" / "encoded.json"), "--data", str(base / "enc"), "--out",
                 str(tmp_path / "o"), "--device", "cpu", "--resume", str(tmp_path)]) == 2
    assert "no training state there" in capsys.readouterr().err
