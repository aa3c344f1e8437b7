"""The released RefAny3D files (docs/method.md §3, §7): loading, mapping onto ComfyUI's Flux, rejection of
malformed files, the .pth -> .safetensors converter, and the tiny test models.

Oracle for the mapping: ComfyUI's own diffusers-LoRA path (comfy.lora.model_lora_keys_unet +
comfy.lora.load_lora + ModelPatcher.add_patches + comfy.lora.calculate_weight), i.e. the weight
ComfyUI would merge for the same file; our unmerged factors must give the same delta on any input.
"""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import comfy.lora
import comfy.utils
from conftest import ROOT
from tools import tiny_models as tiny
from model_patches import (AdapterError, RefAny3DAdapter, convert_domain_embedder, load_adapter, release_modules,
                           validate_adapter)
from model_patches import AdapterWeights
from model_patches.modulation import domain_embeddings
from model_patches.routing import lora_delta
from tools.release_files import release_state_dicts, save_release_files

D, DEPTH, SINGLE = 64, 2, 2


@pytest.fixture(scope="module")
def flux():
    """A tiny ComfyUI Flux (ModelPatcher), D=64, 2 double + 2 single blocks."""
    return tiny.build_flux(hidden_size=D, num_heads=2, depth=DEPTH, depth_single_blocks=SINGLE, seed=1)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release")
    return save_release_files(folder, D, DEPTH, SINGLE, rank=4, seed=3)


@pytest.fixture(scope="module")
def adapter(release):
    return load_adapter(release["reference"], release["domain"], release["domain_embedder"])


def comfy_merged_deltas(patcher, lora_sd: dict) -> dict[str, torch.Tensor]:
    """{comfy module path: W_merged - W} as ComfyUI's own LoRA loader computes them."""
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    patches = comfy.lora.load_lora(lora_sd, key_map, log_missing=True)
    p = patcher.clone()
    p.add_patches(patches, 1.0)
    sd = p.model.state_dict()
    out = {}
    for key, plist in p.patches.items():
        w = sd[key].float()
        merged = comfy.lora.calculate_weight(plist, w.clone(), key)
        out[key[len("diffusion_model."):-len(".weight")]] = merged - w
    return out


def check_against_comfy(adapter, name, lora_sd, patcher):
    deltas = comfy_merged_deltas(patcher, lora_sd)
    assert set(deltas) == set(adapter.loras[name]), (sorted(deltas), sorted(adapter.loras[name]))
    g = torch.Generator().manual_seed(0)
    for module, dw in deltas.items():
        x = torch.randn(5, dw.shape[1], generator=g)
        ours = lora_delta(x, *adapter.loras[name][module])
        want = x @ dw.T
        assert ours.shape == want.shape, module
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5, msg=f"{name} {module}")
        assert want.abs().max() > 1e-3, module  # the LoRA really does something there


# --------------------------------------------------------------------------------------------
# loading and mapping

def test_release_files_load_and_cover_every_adapted_layer(adapter, flux):
    assert isinstance(adapter, RefAny3DAdapter) and adapter.hidden_size == D
    expected = {"img_in"}
    expected |= {f"double_blocks.{i}.{m}" for i in range(DEPTH)
                 for m in ("img_mod.lin", "img_attn.qkv", "img_attn.proj", "img_mlp.2")}
    expected |= {f"single_blocks.{i}.{m}" for i in range(SINGLE) for m in ("modulation.lin", "linear1", "linear2")}
    for name in ("reference", "domain"):
        assert set(adapter.loras[name]) == expected
    validate_adapter(adapter, flux.model.diffusion_model, require_all_layers=True)
    down, up = adapter.loras["reference"]["single_blocks.1.linear1"]
    assert down.shape == (4 * 4, D) and up.shape == (3 * D + 4 * D, 4 * 4)
    down, up = adapter.loras["domain"]["double_blocks.0.img_attn.qkv"]
    assert down.shape == (3 * 4, D) and up.shape == (3 * D, 3 * 4)
    assert adapter.parts["reference"]["single_blocks.0.linear1"] == ("q", "k", "v", "mlp")


@pytest.mark.parametrize("name", ["reference", "domain"])
def test_mapping_matches_comfyui_merged_lora(adapter, release, flux, name):
    """Every module: delta(x) from our unmerged factors == x @ (W_merged - W).T from comfy.lora."""
    sd = safetensors.torch.load_file(str(release[name]))
    check_against_comfy(adapter, name, sd, flux)


def test_fused_slices_are_placed_in_their_rows(adapter, release):
    sd = safetensors.torch.load_file(str(release["reference"]))
    down, up = adapter.loras["reference"]["double_blocks.0.img_attn.qkv"]
    x = torch.randn(3, D)
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        a = sd[f"transformer.transformer_blocks.0.attn.{part}.lora_A.weight"]
        b = sd[f"transformer.transformer_blocks.0.attn.{part}.lora_B.weight"]
        torch.testing.assert_close(((x @ down.T) @ up.T)[:, i * D:(i + 1) * D], (x @ a.T) @ b.T)
    down, up = adapter.loras["reference"]["single_blocks.1.linear1"]
    a = sd["transformer.single_transformer_blocks.1.proj_mlp.lora_A.weight"]
    b = sd["transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight"]
    torch.testing.assert_close(((x @ down.T) @ up.T)[:, 3 * D:], (x @ a.T) @ b.T)


def test_alpha_key_scales_by_alpha_over_rank(release, flux, tmp_path):
    sd = safetensors.torch.load_file(str(release["reference"]))
    alpha_sd = dict(sd)
    for k in sd:
        if k.endswith(".lora_A.weight"):
            alpha_sd[k[:-len(".lora_A.weight")] + ".alpha"] = torch.tensor(2.0)  # rank 4: scale 0.5
    path = tmp_path / "alpha.safetensors"
    safetensors.torch.save_file(alpha_sd, str(path))
    scaled = load_adapter(path, release["domain"], release["domain_embedder"])
    plain = load_adapter(release["reference"], release["domain"], release["domain_embedder"])
    x = torch.randn(2, D)
    module = "double_blocks.1.img_attn.proj"
    torch.testing.assert_close(lora_delta(x, *scaled.loras["reference"][module]),
                               0.5 * lora_delta(x, *plain.loras["reference"][module]))
    check_against_comfy(scaled, "reference", alpha_sd, flux)


def test_domain_embedder_is_the_release_mlp(adapter, release):
    sd = torch.load(str(release["domain_embedder"]), weights_only=True)
    for d in (0, 1):
        h = sd["1.weight"] @ sd["0.weight"][d] + sd["1.bias"]
        want = sd["3.weight"] @ torch.nn.functional.silu(h) + sd["3.bias"]
        torch.testing.assert_close(domain_embeddings(adapter, torch.float32, "cpu")[d], want)
    emb = adapter.domain_embedder
    assert isinstance(emb, torch.nn.Sequential) and set(emb.state_dict()) == {"0.weight", "1.weight", "1.bias",
                                                                              "3.weight", "3.bias"}


def test_state_dicts_load_like_files(adapter, release):
    sds = {n: (safetensors.torch.load_file(str(p)) if str(p).endswith(".safetensors")
               else torch.load(str(p), weights_only=True)) for n, p in release.items()}
    again = load_adapter(sds["reference"], sds["domain"], adapter.domain_embedder)
    assert again.files["domain_embedder"] == "<domain embedder state dict>"
    for name in ("reference", "domain"):
        for module, (down, up) in adapter.loras[name].items():
            assert torch.equal(again.loras[name][module][0], down) and torch.equal(again.loras[name][module][1], up)


def test_zero_release_files_give_zero_deltas(tmp_path):
    paths = save_release_files(tmp_path, D, 1, 1, zero=True)
    a = load_adapter(paths["reference"], paths["domain"], paths["domain_embedder"])
    for mods in a.loras.values():
        for module, (_, up) in mods.items():
            assert not up.any(), module
    assert not domain_embeddings(a, torch.float32, "cpu").any()


def test_adapter_weights_module_holds_one_copy_that_moves_in_place(adapter):
    """AdapterWeights (what ComfyUI's model management moves) in the compute dtype; its ``loras`` view
    follows the module wherever it is moved, and the loaded adapter is left as it was."""
    half = AdapterWeights(adapter, torch.bfloat16)
    down, up = half.loras["domain"]["img_in"]
    assert down.dtype == up.dtype == torch.bfloat16 and not down.requires_grad
    assert torch.equal(down.float(), adapter.loras["domain"]["img_in"][0].to(torch.bfloat16).float())
    assert next(half.domain_embedder.parameters()).dtype == torch.bfloat16
    assert adapter.loras["domain"]["img_in"][0].dtype == torch.float32
    assert next(adapter.domain_embedder.parameters()).dtype == torch.float32
    assert half.hidden_size == D and half.files == adapter.files
    counted = sum(d.nbytes + u.nbytes for mods in half.loras.values() for d, u in mods.values())
    counted += sum(p.nbytes for p in half.domain_embedder.parameters())
    assert half.nbytes() == counted  # what ComfyUI counts (module_size) is exactly the adapter
    half.to("meta")  # the view reads the module's parameters as they are after a move
    assert half.loras["domain"]["img_in"][0].device.type == "meta" and set(half.loras["domain"]) == \
        set(adapter.loras["domain"])


# --------------------------------------------------------------------------------------------
# malformed files

def write_variant(tmp_path, release, edit, name="reference"):
    sd = safetensors.torch.load_file(str(release[name]))
    edit(sd)
    path = tmp_path / f"variant_{name}.safetensors"
    safetensors.torch.save_file(sd, str(path))
    return path


def load_with(release, **override):
    files = {"reference": release["reference"], "domain": release["domain"], "domain_embedder": release["domain_embedder"]}
    files.update(override)
    return load_adapter(files["reference"], files["domain"], files["domain_embedder"])


def lora_pair(sd, module, r=4, fan_in=D, fan_out=D):
    sd[f"transformer.{module}.lora_A.weight"] = torch.randn(r, fan_in)
    sd[f"transformer.{module}.lora_B.weight"] = torch.randn(fan_out, r)


@pytest.mark.parametrize("module, words", [
    ("context_embedder", "text stream"),
    ("transformer_blocks.0.attn.add_q_proj", "text stream"),
    ("transformer_blocks.1.ff_context.net.2", "text stream"),
    ("transformer_blocks.0.norm1_context.linear", "text stream"),
    ("transformer_blocks.0.ff.net.0.proj", "not a layer RefAny3D adapts"),
    ("proj_out", "not a layer"),
])
def test_foreign_modules_are_rejected(tmp_path, release, module, words):
    path = write_variant(tmp_path, release, lambda sd: lora_pair(sd, module))
    with pytest.raises(AdapterError) as e:
        load_with(release, reference=path)
    msg = str(e.value)
    assert words in msg and f"transformer.{module}.lora_A.weight" in msg and "variant_reference.safetensors" in msg, msg


def test_non_diffusers_keys_are_rejected(tmp_path, release):
    def edit(sd):
        sd["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"] = torch.zeros(4, D)
    path = write_variant(tmp_path, release, edit, name="domain")
    with pytest.raises(AdapterError, match=r"Domain-LoRA file 'variant_domain.safetensors'.*"
                                           r"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight.*not a diffusers LoRA key"):
        load_with(release, domain=path)


def test_missing_lora_b_is_rejected(tmp_path, release):
    key = "transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight"
    path = write_variant(tmp_path, release, lambda sd: sd.pop(key))
    with pytest.raises(AdapterError, match=f"key '{key}' is missing"):
        load_with(release, reference=path)


def test_file_without_lora_is_rejected(tmp_path, release):
    path = tmp_path / "empty.safetensors"
    safetensors.torch.save_file({}, str(path))
    with pytest.raises(AdapterError, match="'empty.safetensors' holds no LoRA weights"):
        load_with(release, domain=path)


@pytest.mark.parametrize("key, shape, expected", [
    ("transformer.transformer_blocks.0.attn.to_k.lora_A.weight", (4, D - 1), f"[4, {D}]"),
    ("transformer.transformer_blocks.1.norm1.linear.lora_B.weight", (5 * D, 4), f"[{6 * D}, 4]"),
    ("transformer.single_transformer_blocks.0.proj_out.lora_A.weight", (4, 2 * D), f"[4, {5 * D}]"),
    ("transformer.x_embedder.lora_B.weight", (D + 2, 4), f"[{D}, 4]"),
])
def test_wrong_shapes_are_rejected(tmp_path, release, key, shape, expected):
    def edit(sd):
        sd[key] = torch.randn(*shape)
    path = write_variant(tmp_path, release, edit)
    with pytest.raises(AdapterError) as e:
        load_with(release, reference=path)
    msg = str(e.value)
    assert key in msg and f"[{shape[0]}, {shape[1]}]" in msg and expected in msg and "D=64" in msg, msg


def test_rank_mismatch_is_rejected(tmp_path, release):
    key = "transformer.transformer_blocks.0.ff.net.2.lora_B.weight"
    path = write_variant(tmp_path, release, lambda sd: sd.__setitem__(key, torch.randn(D, 3)))
    with pytest.raises(AdapterError, match="are not a LoRA pair"):
        load_with(release, reference=path)


def test_width_different_from_the_model_is_rejected(tmp_path, flux):
    paths = save_release_files(tmp_path, 2 * D, DEPTH, SINGLE, rank=4)
    wide = load_adapter(paths["reference"], paths["domain"], paths["domain_embedder"])
    with pytest.raises(AdapterError, match=r"D=128 wide Flux \(domain embedder 'domain_embedder.pth'\).*hidden size is 64"):
        validate_adapter(wide, flux.model.diffusion_model)


def test_deeper_files_than_the_model_are_rejected(tmp_path, flux):
    paths = save_release_files(tmp_path, D, DEPTH + 1, SINGLE, rank=4)
    deep = load_adapter(paths["reference"], paths["domain"], paths["domain_embedder"])
    with pytest.raises(AdapterError, match=r"'default.safetensors': module 'double_blocks.2.img_attn.proj' is block 2 "
                                           r"but the model has 2 double_blocks"):
        validate_adapter(deep, flux.model.diffusion_model)


def test_partial_files_fail_only_the_strict_check(tmp_path, flux):
    paths = save_release_files(tmp_path, D, DEPTH - 1, SINGLE, rank=4)
    part = load_adapter(paths["reference"], paths["domain"], paths["domain_embedder"])
    validate_adapter(part, flux.model.diffusion_model)
    with pytest.raises(AdapterError, match=r"no LoRA for 6 adapted layer\(s\).*transformer.transformer_blocks.1"):
        validate_adapter(part, flux.model.diffusion_model, require_all_layers=True)


def test_mlp_width_mismatch_against_the_model(tmp_path, flux):
    paths = save_release_files(tmp_path, D, DEPTH, SINGLE, rank=4, mlp_ratio=2.0)
    a = load_adapter(paths["reference"], paths["domain"], paths["domain_embedder"])
    with pytest.raises(AdapterError, match=r"module 'double_blocks.0.img_mlp.2' takes 128 input features.*takes 256"):
        validate_adapter(a, flux.model.diffusion_model)


def test_non_flux_model_is_rejected(adapter):
    with pytest.raises(AdapterError, match="needs a Flux model"):
        validate_adapter(adapter, torch.nn.Linear(4, 4))


class RunsCode:
    """A pickle payload that runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_carrying_code_is_refused_and_not_run(tmp_path, release, writer):
    marker = tmp_path / f"pwned-{writer}"
    good = torch.load(str(release["domain_embedder"]), weights_only=True)
    evil = dict(good, **{"3.bias": RunsCode(marker)})
    path = tmp_path / "domain_embedder.pth"
    if writer == "torch.save":
        torch.save(evil, str(path))
    else:
        # a bare pickle (torch.load's protocol 2) whose first global is the payload
        path.write_bytes(pickle.dumps({"3.bias": RunsCode(marker)}, protocol=2))
    with pytest.raises(AdapterError, match=r"refused to load domain embedder file 'domain_embedder.pth'.*"
                                           r"weights_only=True.*GLOBAL posix.system.*never run"):
        load_with(release, domain_embedder=path)
    assert not marker.exists(), "the pickle's code ran"
    with pytest.raises(AdapterError, match="refused"):
        convert_domain_embedder(path, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    # the payload is real: an unrestricted unpickler does run it
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.exists()


def test_pickled_module_is_refused(tmp_path, release):
    emb = torch.nn.Sequential(torch.nn.Embedding(2, 256), torch.nn.Linear(256, D), torch.nn.SiLU(), torch.nn.Linear(D, D))
    path = tmp_path / "module.pth"
    torch.save(emb, str(path))
    with pytest.raises(AdapterError, match="refused to load domain embedder file 'module.pth'.*"
                                           "GLOBAL torch.nn.modules.container.Sequential"):
        load_with(release, domain_embedder=path)


def test_non_tensor_values_are_rejected(tmp_path, release):
    good = torch.load(str(release["domain_embedder"]), weights_only=True)
    path = tmp_path / "ints.pth"
    torch.save(dict(good, **{"1.bias": 3, "step": "x"}), str(path))
    with pytest.raises(AdapterError, match=r"'ints.pth' holds values that are not tensors: '1.bias' \(int\), 'step' \(str\)"):
        load_with(release, domain_embedder=path)
    path = tmp_path / "list.pth"
    torch.save([good["0.weight"]], str(path))
    with pytest.raises(AdapterError, match="holds a list, not a state dict"):
        load_with(release, domain_embedder=path)


@pytest.mark.parametrize("edit, words", [
    (lambda sd: sd.pop("3.bias"), r"missing \['3.bias'\]"),
    (lambda sd: sd.__setitem__("extra", torch.zeros(1)), r"unexpected \['extra'\]"),
    (lambda sd: sd.__setitem__("0.weight", torch.zeros(3, 256)), r"key '0.weight' has shape \[3, 256\], expected \[2, 256\]"),
    (lambda sd: sd.__setitem__("3.weight", torch.zeros(D, D + 1)), rf"key '3.weight' has shape \[{D}, {D + 1}\], expected \[{D}, {D}\]"),
])
def test_malformed_domain_embedder_is_rejected(tmp_path, release, edit, words):
    sd = torch.load(str(release["domain_embedder"]), weights_only=True)
    edit(sd)
    path = tmp_path / "bad_embedder.pth"
    torch.save(sd, str(path))
    with pytest.raises(AdapterError, match=r"domain embedder file 'bad_embedder.pth'.*" + words):
        load_with(release, domain_embedder=path)


def test_embedder_width_must_match_the_loras(tmp_path, release):
    other = save_release_files(tmp_path, 2 * D, 1, 1, rank=4)
    with pytest.raises(AdapterError, match=r"Reference-LoRA file 'default.safetensors': key .* for a D=128 model "
                                           r"\(width from domain embedder 'domain_embedder.pth'\)"):
        load_with(release, domain_embedder=other["domain_embedder"])


def test_missing_and_unreadable_files(tmp_path, release):
    with pytest.raises(AdapterError, match="Reference-LoRA file not found: .*nothing.safetensors"):
        load_with(release, reference=tmp_path / "nothing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(AdapterError, match="'junk.safetensors' is not a readable .safetensors file"):
        load_with(release, domain=junk)
    junk_pth = tmp_path / "junk.pth"
    junk_pth.write_bytes(b"\x00\x01garbage")
    with pytest.raises(AdapterError, match="refused to load domain embedder file 'junk.pth'"):
        load_with(release, domain_embedder=junk_pth)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(release["domain_embedder"].read_bytes()[:2000])
    with pytest.raises(AdapterError, match="domain embedder file 'cut.pth' could not be read as a torch state dict"):
        load_with(release, domain_embedder=cut)


# --------------------------------------------------------------------------------------------
# converter

def test_converter_round_trip(tmp_path, release, adapter):
    out = convert_domain_embedder(release["domain_embedder"], tmp_path / "domain_embedder.safetensors")
    st = safetensors.torch.load_file(str(out))
    pth = torch.load(str(release["domain_embedder"]), weights_only=True)
    assert set(st) == set(pth) and all(torch.equal(st[k], pth[k]) for k in pth)
    again = load_with(release, domain_embedder=out)
    for k, v in adapter.domain_embedder.state_dict().items():
        assert torch.equal(again.domain_embedder.state_dict()[k], v)
    assert again.files["domain_embedder"] == "domain_embedder.safetensors"


def test_converter_cli(tmp_path, release):
    out = tmp_path / "cli.safetensors"
    run = subprocess.run([sys.executable, "-m", "model_patches.convert", str(release["domain_embedder"]), str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"wrote {out}" in run.stdout
    assert set(safetensors.torch.load_file(str(out))) == {"0.weight", "1.weight", "1.bias", "3.weight", "3.bias"}
    bad = tmp_path / "bad.pth"
    torch.save({"0.weight": torch.zeros(2, 256)}, str(bad))
    run = subprocess.run([sys.executable, "-m", "model_patches.convert", str(bad), str(tmp_path / "x.safetensors")],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "error: domain embedder file 'bad.pth'" in run.stderr and "missing" in run.stderr


# --------------------------------------------------------------------------------------------
# the writers and the tiny models

def test_release_writer_uses_the_release_key_format(release):
    sd = safetensors.torch.load_file(str(release["domain"]))
    mods = release_modules(DEPTH, SINGLE)
    assert set(sd) == {f"transformer.{m}.lora_{x}.weight" for m in mods for x in "AB"}
    assert sd["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"].shape == (4, D)
    assert sd["transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight"].shape == (4 * D, 4)
    assert sd["transformer.x_embedder.lora_A.weight"].shape == (4, 64)
    pth = torch.load(str(release["domain_embedder"]), weights_only=True)
    assert {k: tuple(v.shape) for k, v in pth.items()} == {"0.weight": (2, 256), "1.weight": (D, 256), "1.bias": (D,),
                                                           "3.weight": (D, D), "3.bias": (D,)}
    a = release_state_dicts(D, 1, 1, seed=5)
    b = release_state_dicts(D, 1, 1, seed=5)
    assert all(torch.equal(a["reference"][k], b["reference"][k]) for k in a["reference"])
    assert not torch.equal(a["reference"]["transformer.x_embedder.lora_B.weight"],
                           a["domain"]["transformer.x_embedder.lora_B.weight"])


def test_tiny_flux_is_a_comfyui_flux_with_live_weights(flux):
    import comfy.model_base
    import comfy.model_patcher
    from comfy.ldm.flux.model import Flux
    assert isinstance(flux, comfy.model_patcher.ModelPatcher) and isinstance(flux.model, comfy.model_base.Flux)
    f = flux.model.diffusion_model
    assert isinstance(f, Flux) and f.hidden_size == D and len(f.double_blocks) == DEPTH
    for name in ("final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight",
                 "double_blocks.0.img_mod.lin.weight", "single_blocks.0.modulation.lin.weight"):
        assert f.get_parameter(name).abs().mean() > 1e-3, name
    g = torch.Generator().manual_seed(0)
    x, ctx, y = torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g), torch.randn(2, 16, generator=g)
    with torch.no_grad():
        out = f(x, torch.tensor([0.3, 0.9]), ctx, y=y, guidance=torch.tensor([3.5, 3.5]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert 0.05 < out.std() < 20 and not torch.allclose(out[0], out[1])
    again = tiny.build_flux_module(hidden_size=D, num_heads=2, depth=DEPTH, depth_single_blocks=SINGLE, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(f.state_dict().values(), again.state_dict().values()))


def test_tiny_taesd_vae_loads_as_a_16_channel_vae(tmp_path):
    import comfy.sd
    path = tiny.write_taesd_vae(tmp_path / "vae.safetensors")
    sd = comfy.utils.load_torch_file(str(path))
    assert any(k.startswith("taesd_encoder.") for k in sd) and "taesd_decoder.1.weight" in sd
    vae = comfy.sd.VAE(sd=sd)
    assert vae.latent_channels == 16
    img = torch.rand(1, 64, 96, 3)
    with torch.inference_mode():
        lat = vae.encode(img)
        assert lat.shape == (1, 16, 8, 12) and torch.isfinite(lat).all()
        dec = vae.decode(lat)
    assert dec.shape == (1, 64, 96, 3) and 0 <= dec.min() and dec.max() <= 1 and dec.std() > 0.02


def test_flux_checkpoint_loads_through_comfyui(tmp_path):
    import comfy.model_base
    import comfy.sd
    path = tiny.write_flux_checkpoint(tmp_path / "flux_tiny.safetensors")
    try:
        assert path.stat().st_size < 1.2e9
        patcher = comfy.sd.load_diffusion_model(str(path))
        assert isinstance(patcher.model, comfy.model_base.Flux)
        cfg = patcher.model.model_config.unet_config
        assert (cfg["hidden_size"], cfg["depth"], cfg["depth_single_blocks"], cfg["context_in_dim"],
                cfg["vec_in_dim"], cfg["guidance_embed"]) == (3072, 1, 1, 4096, 768, True)
        f = patcher.model.diffusion_model
        dt = patcher.model.get_dtype()
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            out = f(torch.randn(1, 16, 4, 4, generator=g).to(dt), torch.tensor([0.5]),
                    torch.randn(1, 3, 4096, generator=g).to(dt), y=torch.randn(1, 768, generator=g).to(dt),
                    guidance=torch.tensor([3.5]))
        assert out.shape == (1, 16, 4, 4) and torch.isfinite(out).all() and out.float().std() > 0.05
        del patcher, f
    finally:
        path.unlink()


# --------------------------------------------------------------------------------------------
# values: finite and of a sane magnitude, checked once per file (issue 10, case 3)

LORA_KEY_B = "transformer.single_transformer_blocks.1.proj_out.lora_B.weight"


def damaged(tmp_path, release, which, key, index, value, dtype=None):
    """A copy of one release file with ``value`` written at ``key[index]`` (the file's tensors in ``dtype``)."""
    if which == "domain_embedder":
        sd = torch.load(str(release["domain_embedder"]), weights_only=True)
    else:
        sd = safetensors.torch.load_file(str(release[which]))
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    sd[key][index] = value
    path = tmp_path / f"damaged_{which}{'.pth' if which == 'domain_embedder' else '.safetensors'}"
    if which == "domain_embedder":
        torch.save(sd, str(path))
    else:
        safetensors.torch.save_file(sd, str(path))
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("which, key", [("reference", LORA_KEY_B), ("domain", "transformer.x_embedder.lora_A.weight"),
                                        ("domain_embedder", "1.bias")])
@pytest.mark.parametrize("value, words", [(float("nan"), r"1 non-finite value\(s\) \(NaN\)"),
                                          (float("-inf"), r"1 non-finite value\(s\) \(inf\)")])
def test_non_finite_weights_are_refused_naming_file_and_key(tmp_path, release, dtype, which, key, value, words):
    index = (2,) if key.endswith("bias") else (1, 2)
    path = damaged(tmp_path, release, which, key, index, value, dtype)
    with pytest.raises(AdapterError, match=rf"file '{path.name}': key '{key}' holds {words} among \d+ \(first at "
                                           rf"index \[{', '.join(map(str, index))}\]\): the file is damaged"):
        load_with(release, **{which: path})


def test_magnitude_bound_is_generous_for_real_weights_and_refuses_absurd_ones(tmp_path, release):
    from model_patches.weights import MAX_ABS_WEIGHT
    assert MAX_ABS_WEIGHT == 1e4
    ok = damaged(tmp_path, release, "reference", LORA_KEY_B, (0, 0), -1e4)  # the bound itself loads
    load_with(release, reference=ok)
    for which, key, value in (("reference", LORA_KEY_B, 1.5e4), ("domain_embedder", "3.weight", -2e38)):
        path = damaged(tmp_path, release, which, key, (3, 1), value)
        with pytest.raises(AdapterError, match=rf"'{path.name}': key '{key}' holds a value of magnitude "
                                               rf"{re.escape(f'{abs(value):.3g}')} \(at index \[3, 1\]\); RefAny3D weights are of "
                                               r"order 1 and at most 10000 is accepted"):
            load_with(release, **{which: path})


def test_converter_refuses_a_damaged_embedder(tmp_path, release):
    path = damaged(tmp_path, release, "domain_embedder", "0.weight", (1, 5), float("nan"))
    with pytest.raises(AdapterError, match="key '0.weight' holds 1 non-finite"):
        convert_domain_embedder(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("alpha, words", [
    (torch.tensor(3e30), r"holds a value of magnitude 3e\+30; RefAny3D weights are of order 1"),
    (torch.tensor(float("inf")), r"holds 1 non-finite value\(s\) \(inf\): the file is damaged"),
    (torch.tensor(10**12, dtype=torch.int64), r"holds 1e\+12; a LoRA alpha"),
    (torch.tensor(1 + 2j), r"must hold one real number, has torch.complex64"),
])
def test_absurd_alpha_is_refused(tmp_path, release, alpha, words):
    sd = safetensors.torch.load_file(str(release["reference"]))
    sd["transformer.x_embedder.alpha"] = alpha
    path = tmp_path / "alpha.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(AdapterError, match=rf"'alpha.safetensors': key 'transformer.x_embedder.alpha' {words}"):
        load_with(release, reference=path)


def test_rank_zero_pair_is_refused(tmp_path, release):
    sd = safetensors.torch.load_file(str(release["reference"]))
    sd["transformer.x_embedder.lora_A.weight"] = torch.zeros(0, 64)
    sd["transformer.x_embedder.lora_B.weight"] = torch.zeros(D, 0)
    sd["transformer.x_embedder.alpha"] = torch.tensor(4.0)
    path = tmp_path / "rank0.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(AdapterError, match=r"\[0, 64\] and .* \[64, 0\] have rank 0: not a LoRA"):
        load_with(release, reference=path)


def test_float8_lora_factors_load_like_their_float32_values(tmp_path, release):
    """fp8-stored factors are widened to float32 (torch cannot promote or min/max float8 on the CPU)."""
    sd = safetensors.torch.load_file(str(release["domain"]))
    f8 = {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}
    f8["transformer.x_embedder.lora_B.weight"] = f8["transformer.x_embedder.lora_B.weight"].to(torch.float8_e5m2)
    path, wide = tmp_path / "f8.safetensors", tmp_path / "wide.safetensors"
    safetensors.torch.save_file(f8, str(path))
    safetensors.torch.save_file({k: v.float() for k, v in f8.items()}, str(wide))
    a, b = load_with(release, domain=path), load_with(release, domain=wide)
    for module, (down, up) in b.loras["domain"].items():
        assert torch.equal(a.loras["domain"][module][0], down) and torch.equal(a.loras["domain"][module][1], up)
    nan = dict(f8, **{LORA_KEY_B: f8[LORA_KEY_B].clone()})
    nan[LORA_KEY_B][0, 0] = float("nan")
    safetensors.torch.save_file(nan, str(path))
    with pytest.raises(AdapterError, match="non-finite"):
        load_with(release, domain=path)


def test_one_layer_named_twice_is_refused(tmp_path, release):
    sd = safetensors.torch.load_file(str(release["reference"]))
    sd["x_embedder.lora_A.weight"] = sd["transformer.x_embedder.lora_A.weight"].clone()
    path = tmp_path / "twice.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(AdapterError, match=r"keys '.*x_embedder.lora_A.weight' and '.*x_embedder.lora_A.weight' are the "
                                           r"same LoRA weight"):
        load_with(release, reference=path)
