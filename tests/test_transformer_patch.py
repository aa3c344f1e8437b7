"""The RefAny3D model patch and nodes in-process, with ComfyUI's real samplers on tiny Flux models.

* KSampler (comfy.sample.sample) on the joined latent equals Euler integration written out by hand
  with refany3d_forward and the image-guidance formula of docs/method.md §5.
* SamplerCustomAdvanced's path (CFGGuider + a SAMPLER object + SIGMAS) gives the same result.
* The shared model is never modified; the reference cache is used within a run and emptied after.
* Every clear error of the nodes (called directly; the pack imported as a package).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest
import torch

from conftest import ROOT
from tools import tiny_models as tiny
from model_patches import RefAny3DError, RefAny3DPatch, apply_refany3d, load_adapter, refany3d_forward, split_joined
from tools.release_files import release_state_dicts

D, CTX, POOLED = 32, 24, 12


def import_pack():
    """The pack as ComfyUI imports it (a package, relative imports), under a private name."""
    name = "refany3d_pack_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return (importlib.import_module(f"{name}.nodes.model"), importlib.import_module(f"{name}.nodes.latents"))


@pytest.fixture(scope="module")
def parts():
    patcher = tiny.build_flux(hidden_size=D, num_heads=2, depth=1, depth_single_blocks=1, context_in_dim=CTX,
                              vec_in_dim=POOLED, seed=0)
    sds = release_state_dicts(D, 1, 1, rank=4, seed=1)
    adapter = load_adapter(sds["reference"], sds["domain"], sds["domain_embedder"])
    g = torch.Generator().manual_seed(2)
    refs = [torch.randn(2, 16, 4, 4, generator=g) for _ in range(4)]  # rgb, pm, black rgb, black pm
    refs[3] = refs[2].clone()
    cond = [[torch.randn(1, 5, CTX, generator=g), {"pooled_output": torch.randn(1, POOLED, generator=g),
                                                   "guidance": 3.5}]]
    return patcher, adapter, refs, cond


def ksample(model, cond, latent, steps=3, seed=0, sampler="euler", scheduler="simple"):
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, 1.0, sampler, scheduler, cond, cond, latent, seed=seed,
                               disable_pbar=True), noise


@pytest.mark.parametrize("s,mode", [(2.0, "unmasked (release)"), (1.5, "masked"), (1.0, "masked")])
def test_ksampler_equals_hand_written_euler_with_image_guidance(parts, s, mode):
    import comfy.samplers
    patcher, adapter, refs, cond = parts
    model = apply_refany3d(patcher, adapter, *refs, image_guidance=s, guidance_pass=mode)
    latent = torch.zeros(2, 16, 4, 12)  # batch 2, RGB 4×6 | point map 4×6
    out, noise = ksample(model, cond, latent, steps=3)
    patch = model.get_wrappers("diffusion_model", "refany3d")[0]
    assert patch.calls == 3  # one transformer call per step: both guidance passes batched

    flux = patcher.model.diffusion_model
    ms = patcher.model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple", 3)
    x = ms.noise_scaling(sigmas[0], noise, latent)
    ctx, pooled = cond[0][0].expand(2, -1, -1), cond[0][1]["pooled_output"].expand(2, -1)
    b = 2
    masked_black = mode == "masked"
    with torch.no_grad():
        for i in range(3):
            sig = sigmas[i]
            t, gd = torch.full((b,), float(sig)), torch.full((b,), 3.5)
            xr, xp = x[..., :6], x[..., 6:]
            r = [z[None].expand(b, -1, -1, -1, -1) for z in refs]
            v_ref = refany3d_forward(flux, adapter, xr, xp, r[0], r[1], t, ctx, pooled, gd, masked=True)
            if s != 1.0:
                v_blk = refany3d_forward(flux, adapter, xr, xp, r[2], r[3], t, ctx, pooled, gd, masked=masked_black)
                v = [vb + s * (va - vb) for va, vb in zip(v_ref, v_blk)]
            else:
                v = list(v_ref)
            x = x + (sigmas[i + 1] - sig) * torch.cat(v, dim=-1)
    expected = patcher.model.process_latent_out(ms.inverse_noise_scaling(sigmas[-1], x))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_sampler_custom_advanced_path_equals_ksampler(parts):
    import comfy.sample
    import comfy.samplers
    patcher, adapter, refs, cond = parts
    model = apply_refany3d(patcher, adapter, *refs)
    latent = torch.zeros(1, 16, 4, 8)
    out_k, noise = ksample(model, cond, latent, steps=2, sampler="dpmpp_2m", scheduler="beta")
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(cond, cond)
    guider.set_cfg(1.0)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "beta", 2)
    out_c = guider.sample(noise, latent, comfy.samplers.sampler_object("dpmpp_2m"), sigmas, disable_pbar=True, seed=0)
    torch.testing.assert_close(out_c.to(out_k), out_k, rtol=1e-5, atol=1e-5)


def test_shared_model_untouched_and_cache_lives_for_one_run(parts):
    patcher, adapter, refs, cond = parts
    latent = torch.zeros(1, 16, 4, 8)
    before, _ = ksample(patcher, cond, latent, steps=2)
    model = apply_refany3d(patcher, adapter, *refs, image_guidance=2.0, cache_references=True)
    assert patcher.get_all_wrappers("diffusion_model") == [] and patcher.get_all_wrappers("outer_sample") == []
    patch: RefAny3DPatch = model.get_wrappers("diffusion_model", "refany3d")[0]
    with_refs, _ = ksample(model, cond, latent, steps=3)
    assert patch.cache.misses == 1 and patch.cache.hits == 2  # first step computes, later steps reuse
    assert len(patch.cache) == 0  # emptied at the end of the run
    again, _ = ksample(model, cond, latent, steps=3)
    torch.testing.assert_close(again, with_refs, rtol=0, atol=0)
    assert patch.cache.misses == 2  # a new run starts from an empty cache
    after, _ = ksample(patcher, cond, latent, steps=2)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert (with_refs[..., :4] - before[..., :4]).abs().max() > 1e-3
    # a different prompt (pooled vector) on the same patch never reuses entries of the first
    other = [[cond[0][0], dict(cond[0][1], pooled_output=cond[0][1]["pooled_output"] + 1)]]
    plain = apply_refany3d(patcher, adapter, *refs, image_guidance=2.0, cache_references=True)
    a, _ = ksample(plain, other, latent, steps=2)
    patch.cache.clear()
    b, _ = ksample(model, other, latent, steps=2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# nodes and their errors

@pytest.fixture(scope="module")
def vae():
    import comfy.sd
    return comfy.sd.VAE(sd=tiny.random_taesd_state_dict(seed=0))


def test_nodes_schema_tooltips_and_latents():
    model_nodes, latent_nodes = import_pack()
    for node in model_nodes.NODES + latent_nodes.NODES:
        schema = node.define_schema()
        assert schema.category.startswith("RefAny3D/")
        for inp in schema.inputs:
            assert inp.tooltip, (schema.node_id, inp.id)
    apply_schema = model_nodes.RefAny3DApply.define_schema()
    inputs = {i.id: i for i in apply_schema.inputs}
    assert inputs["image_guidance"].default == 2.0
    assert inputs["guidance_pass"].default == "unmasked (release)"
    assert list(inputs["guidance_pass"].options) == ["unmasked (release)", "masked"]
    empty = latent_nodes.RefAny3DEmptyLatent.execute(48, 32, 3).result[0]["samples"]
    assert empty.shape == (3, 16, 4, 12)
    joined = torch.arange(2 * 16 * 4 * 12, dtype=torch.float32).reshape(2, 16, 4, 12)
    rgb, pm = latent_nodes.RefAny3DSplitLatent.execute({"samples": joined}).result
    assert torch.equal(torch.cat([rgb["samples"], pm["samples"]], -1), joined) and rgb["samples"].shape[-1] == 6
    img = torch.ones(1, 4, 4, 3)
    img[0, 1, 2] = torch.tensor([0.2, 0.95, 1.0])
    img[0, 3, 3] = torch.tensor([0.92, 0.93, 0.99])
    mask = latent_nodes.RefAny3DPointMapToMask.execute(img, 0.9).result[0]
    expected = torch.zeros(1, 4, 4)
    expected[0, 1, 2] = 1
    assert torch.equal(mask, expected)
    assert latent_nodes.RefAny3DPointMapToMask.execute(img, 0.95).result[0].sum() == 2


def test_apply_node_encodes_references_once_in_model_scale(parts, vae):
    model_nodes, _ = import_pack()
    patcher, adapter, _, _ = parts
    g = torch.Generator().manual_seed(3)
    rgb, pm = torch.rand(2, 32, 32, 3, generator=g), torch.rand(2, 32, 32, 3, generator=g)
    model = model_nodes.RefAny3DApply.execute(patcher, adapter, vae, rgb, pm, 2.0, "unmasked (release)", False).result[0]
    patch = model.get_wrappers("diffusion_model", "refany3d")[0]
    base = patcher.model
    torch.testing.assert_close(patch.refs[0], base.process_latent_in(vae.encode(rgb)).float())
    torch.testing.assert_close(patch.refs[1], base.process_latent_in(vae.encode(pm)).float())
    black = base.process_latent_in(vae.encode(torch.zeros(1, 32, 32, 3))).float()
    assert patch.black[0].shape == (2, 16, 4, 4)
    torch.testing.assert_close(patch.black[0], black.expand(2, -1, -1, -1))
    assert patch.guidance_masked is False and patch.image_guidance == 2.0
    one = model_nodes.RefAny3DApply.execute(patcher, adapter, vae, rgb, pm, 1.0, "masked", True).result[0]
    assert one.get_wrappers("diffusion_model", "refany3d")[0].black == (None, None)


def test_apply_node_errors(parts, vae):
    model_nodes, _ = import_pack()
    apply = model_nodes.RefAny3DApply.execute
    patcher, adapter, _, _ = parts
    img = torch.rand(2, 32, 32, 3)
    with pytest.raises(ValueError, match="RefAny3D needs a FLUX.1 model .*the MODEL input is a BaseModel model"):
        apply(tiny.build_sd15(), adapter, vae, img, img)
    sds = release_state_dicts(2 * D, 1, 1, rank=4)
    wide = load_adapter(sds["reference"], sds["domain"], sds["domain_embedder"])
    with pytest.raises(ValueError, match="for a D=64 wide Flux .* the model's hidden size is 32"):
        apply(patcher, wide, vae, img, img)
    with pytest.raises(ValueError, match="reference_rgb has 2 views but reference_point_map has 3"):
        apply(patcher, adapter, vae, img, torch.rand(3, 32, 32, 3))
    with pytest.raises(ValueError, match="reference_rgb views are 32×32 but reference_point_map views are 48×32"):
        apply(patcher, adapter, vae, img, torch.rand(2, 32, 48, 3))
    with pytest.raises(ValueError, match="reference views are 40×40; width and height must be multiples of 16"):
        apply(patcher, adapter, vae, torch.rand(2, 40, 40, 3), torch.rand(2, 40, 40, 3))


def test_latent_node_errors(parts):
    _, latent_nodes = import_pack()
    with pytest.raises(ValueError, match="must be the RGB and point-map latents side by side .*width 7"):
        latent_nodes.RefAny3DSplitLatent.execute({"samples": torch.zeros(1, 16, 4, 7)})
    with pytest.raises(ValueError, match="width must be a multiple of 16 .* got 40"):
        latent_nodes.RefAny3DEmptyLatent.execute(40, 32)
    with pytest.raises(ValueError, match="point_map must be an IMAGE batch"):
        latent_nodes.RefAny3DPointMapToMask.execute(torch.zeros(4, 4), 0.9)
    # an odd joined latent reaching the sampler (e.g. a core empty latent of the wrong width)
    patcher, adapter, refs, cond = parts
    model = apply_refany3d(patcher, adapter, *refs)
    with pytest.raises(RefAny3DError, match="even width.*got width 5"):
        ksample(model, cond, torch.zeros(1, 16, 4, 5), steps=1)
    with pytest.raises(RefAny3DError, match="even width"):
        split_joined(torch.zeros(1, 16, 4, 3))


def test_loras_patched_by_comfyui_on_the_base_model_keep_working(parts):
    """A user LoRA added to the base model with ComfyUI's own path (ModelPatcher.add_patches, as
    LoraLoaderModelOnly does) takes effect under RefAny3D: sampling equals refany3d_forward on a
    model whose weights ComfyUI merged with that LoRA."""
    import comfy.lora
    import comfy.samplers
    patcher, adapter, refs, cond = parts
    g = torch.Generator().manual_seed(9)
    user_lora = {}
    for module, (fan_in, fan_out) in {"transformer_blocks.0.attn.to_q": (D, D),
                                      "transformer_blocks.0.attn.add_k_proj": (D, D),
                                      "single_transformer_blocks.0.proj_out": (5 * D, D)}.items():
        user_lora[f"transformer.{module}.lora_A.weight"] = torch.randn(4, fan_in, generator=g) / fan_in ** 0.5
        user_lora[f"transformer.{module}.lora_B.weight"] = torch.randn(fan_out, 4, generator=g) * 0.5
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    loaded = comfy.lora.load_lora(user_lora, key_map)
    assert len(loaded) == 3
    with_lora = patcher.clone()
    with_lora.add_patches(loaded, 0.8)
    model = apply_refany3d(with_lora, adapter, *refs, image_guidance=1.0)
    latent = torch.zeros(1, 16, 4, 8)
    out, noise = ksample(model, cond, latent, steps=1)
    plain, _ = ksample(apply_refany3d(patcher, adapter, *refs, image_guidance=1.0), cond, latent, steps=1)
    assert (out - plain).abs().max() > 1e-3  # the user's LoRA changed the result

    merged = tiny.build_flux(hidden_size=D, num_heads=2, depth=1, depth_single_blocks=1, context_in_dim=CTX,
                             vec_in_dim=POOLED, seed=0)
    merged.add_patches(comfy.lora.load_lora(user_lora, comfy.lora.model_lora_keys_unet(merged.model, {})), 0.8)
    merged.patch_model(device_to=torch.device("cpu"))
    flux = merged.model.diffusion_model
    ms = patcher.model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple", 1)
    x = ms.noise_scaling(sigmas[0], noise, latent)
    r = [z[None] for z in refs]
    with torch.no_grad():
        v = refany3d_forward(flux, adapter, x[..., :4], x[..., 4:], r[0], r[1], sigmas[:1].float(), cond[0][0],
                             cond[0][1]["pooled_output"], torch.tensor([3.5]))
    expected = patcher.model.process_latent_out(x + (sigmas[1] - sigmas[0]) * torch.cat(v, -1))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_memory_estimate_covers_references_and_guidance_pass(parts):
    """ComfyUI's memory estimate (from the latent's area) is scaled by the PREPARE_SAMPLING wrapper."""
    import comfy.patcher_extension as pe
    import comfy.sampler_helpers
    patcher, adapter, refs, cond = parts
    seen = []

    def prepare(model, noise_shape, conds, model_options=None):
        seen.append(list(noise_shape))
        return comfy.sampler_helpers._prepare_sampling(model, noise_shape, conds, model_options=model_options)
    for s, factor in ((2.0, 5), (1.0, 3)):  # ceil(passes × (48 + 2·2·16) / 48): target area 4×12, 2 views of 4×4
        model = apply_refany3d(patcher, adapter, *refs, image_guidance=s)
        wrappers = model.get_wrappers(pe.WrappersMP.PREPARE_SAMPLING, "refany3d")
        assert len(wrappers) == 1
        seen.clear()
        pe.WrapperExecutor.new_executor(prepare, wrappers).execute(model, [1, 16, 4, 12], {}, model_options={})
        assert seen == [[factor, 16, 4, 12]]
    # and KSampler runs through it
    ksample(apply_refany3d(patcher, adapter, *refs), cond, torch.zeros(1, 16, 4, 12), steps=1)


def test_text_cfg_batches_cond_and_uncond_in_one_call(parts):
    """cfg > 1: ComfyUI batches cond and uncond (and here both guidance passes) into one call."""
    import comfy.sample
    import comfy.samplers
    patcher, adapter, refs, cond = parts
    g = torch.Generator().manual_seed(11)
    neg = [[torch.randn(1, 5, CTX, generator=g), {"pooled_output": torch.randn(1, POOLED, generator=g),
                                                  "guidance": 3.5}]]
    model = apply_refany3d(patcher, adapter, *refs, image_guidance=2.0)
    latent = torch.zeros(2, 16, 4, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    out = comfy.sample.sample(model, noise, 2, 3.0, "euler", "simple", cond, neg, latent, seed=0, disable_pbar=True)
    assert model.get_wrappers("diffusion_model", "refany3d")[0].calls == 2

    flux = patcher.model.diffusion_model
    ms = patcher.model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple", 2)
    x = ms.noise_scaling(sigmas[0], noise, latent)

    def velocity(c, xx, sig):
        b = xx.shape[0]
        r = [z[None].expand(b, -1, -1, -1, -1) for z in refs]
        args = (torch.full((b,), float(sig)), c[0][0].expand(b, -1, -1), c[0][1]["pooled_output"].expand(b, -1),
                torch.full((b,), 3.5))
        v_ref = refany3d_forward(flux, adapter, xx[..., :4], xx[..., 4:], r[0], r[1], *args)
        v_blk = refany3d_forward(flux, adapter, xx[..., :4], xx[..., 4:], r[2], r[3], *args, masked=False)
        return torch.cat([vb + 2.0 * (va - vb) for va, vb in zip(v_ref, v_blk)], -1)
    with torch.no_grad():
        for i in range(2):
            sig = sigmas[i]
            d_c, d_u = x - sig * velocity(cond, x, sig), x - sig * velocity(neg, x, sig)
            denoised = d_u + 3.0 * (d_c - d_u)
            x = x + (sigmas[i + 1] - sig) * (x - denoised) / sig
    torch.testing.assert_close(out, patcher.model.process_latent_out(x), rtol=1e-4, atol=1e-4)


def test_flux_variants_with_other_inputs_are_rejected():
    """A Fill/Depth-type FLUX.1 (more input channels) is a comfy Flux, but not one RefAny3D fits."""
    import comfy.model_patcher
    import comfy.supported_models
    cfg = tiny.flux_unet_config(hidden_size=D, num_heads=2, depth=1, depth_single_blocks=1, context_in_dim=CTX,
                                vec_in_dim=POOLED, in_channels=32)
    cfg["out_channels"] = 16
    config = comfy.supported_models.Flux(cfg)
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_patcher.ModelPatcher(config.get_model({}, ""), load_device=torch.device("cpu"),
                                             offload_device=torch.device("cpu"))
    with pytest.raises(RefAny3DError, match="needs FLUX.1-dev's 16-channel input; this Flux takes 128 input features"):
        apply_refany3d(model, None, torch.zeros(1, 16, 4, 4), torch.zeros(1, 16, 4, 4))


def variant_patcher(**params):
    """A tiny comfy Flux (random init, no weights loaded) built with extra FluxParams options."""
    import comfy.model_patcher
    import comfy.supported_models
    cfg = tiny.flux_unet_config(hidden_size=D, num_heads=2, depth=1, depth_single_blocks=1, context_in_dim=CTX,
                                vec_in_dim=POOLED)
    config = comfy.supported_models.Flux({**cfg, **params})
    config.set_inference_dtype(torch.float32, None)
    return comfy.model_patcher.ModelPatcher(config.get_model({}, ""), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def flux_params_fields() -> set[str]:
    import dataclasses

    from comfy.ldm.flux.model import FluxParams
    return {f.name for f in dataclasses.fields(FluxParams)}


@pytest.mark.parametrize("params, words", [
    (dict(yak_mlp=True), "yak_mlp=True"),                                   # Ovis-type MLP (newer ComfyUI)
    (dict(txt_norm=True), "txt_norm=True"),                                 # a text RMSNorm (newer ComfyUI)
    (dict(txt_ids_dims=[1, 2]), "txt_ids_dims=[1, 2]"),                     # LongCat/Ovis text RoPE ids
    (dict(mlp_silu_act=True), "mlp_silu_act=True"),                         # FLUX.2-type gated MLP
    (dict(global_modulation=True), "global_modulation=True"),               # FLUX.2-type shared modulation
], ids=["yak_mlp", "txt_norm", "txt_ids_dims", "mlp_silu_act", "global_modulation"])
def test_unknown_flux_variants_are_refused_by_name(params, words):
    missing = set(params) - flux_params_fields()
    if missing:
        pytest.skip(f"this ComfyUI's FluxParams has no {', '.join(sorted(missing))}")
    model = variant_patcher(**params)
    with pytest.raises(RefAny3DError, match=r"this Flux is a variant the RefAny3D transformer does not know \(.*"
                                            + words.replace("[", r"\[").replace("]", r"\]")):
        apply_refany3d(model, None, torch.zeros(1, 16, 4, 4), torch.zeros(1, 16, 4, 4))


def test_a_flux_params_option_unknown_to_the_pack_is_refused_when_not_at_its_default():
    """A FluxParams field that a future ComfyUI adds is judged by its dataclass default."""
    import dataclasses

    from model_patches.flux_check import _variant_markers
    flux = variant_patcher().model.diffusion_model
    future = dataclasses.make_dataclass("FluxParams", [(f.name, f.type, f) for f in dataclasses.fields(flux.params)]
                                        + [("new_option", bool, dataclasses.field(default=False))])
    values = {f.name: getattr(flux.params, f.name) for f in dataclasses.fields(flux.params)}
    assert _variant_markers(future(**values)) == []
    assert _variant_markers(future(**values, new_option=True)) == ["new_option=True"]


def test_block_layout_that_differs_from_flux1_is_refused():
    model = variant_patcher()
    flux = model.model.diffusion_model
    original = flux.double_blocks[0].img_mlp
    flux.double_blocks[0].img_mlp = torch.nn.Sequential(original[0], torch.nn.SiLU(), original[2])
    try:
        with pytest.raises(RefAny3DError, match="double block 0 has a Sequential MLP, not FLUX.1's Linear-GELU-Linear"):
            apply_refany3d(model, None, torch.zeros(1, 16, 4, 4), torch.zeros(1, 16, 4, 4))
    finally:
        flux.double_blocks[0].img_mlp = original


def test_prepare_sampling_wrapper_passes_on_whatever_comfyui_hands_it(parts):
    """Whatever positional and keyword arguments a ComfyUI version gives the PREPARE_SAMPLING wrapper
    reach the next executor unchanged, except the noise shape, which is scaled for the references."""
    patch = RefAny3DPatch(None, torch.zeros(2, 16, 4, 4), torch.zeros(2, 16, 4, 4), torch.zeros(2, 16, 4, 4),
                          torch.zeros(2, 16, 4, 4), image_guidance=2.0)
    received = []

    def executor(*args, **kwargs):
        received.append((args, kwargs))
        return "loaded"
    conds, options = {"positive": []}, {"transformer_options": {}}
    assert patch.prepare_sampling(executor, "model", [1, 16, 8, 16], conds, model_options=options,
                                  force_full_load=True, force_offload=False, a_future_option=3) == "loaded"
    args, kwargs = received[-1]
    assert args[0] == "model" and args[2] is conds
    assert args[1] == patch.memory_shape([1, 16, 8, 16]) and args[1][0] > 1
    assert kwargs == dict(model_options=options, force_full_load=True, force_offload=False, a_future_option=3)
    patch.prepare_sampling(executor, model="model", noise_shape=[1, 16, 8, 16], conds=conds)
    assert received[-1] == ((), dict(model="model", noise_shape=patch.memory_shape([1, 16, 8, 16]), conds=conds))


def test_flux_hooks_that_stock_flux_never_calls_are_ignored():
    from model_patches import unsupported_features
    assert unsupported_features({"patches": {"input_block_patch": [print], "attn2_patch": [print],
                                             "emb_patch": [print], "attn1_patch": []},
                                 "patches_replace": {"attn1": {("input", 1): print}}}) == []
    found = unsupported_features({"patches": {"attn1_output_patch": [print], "some_future_hook": [print]},
                                  "patches_replace": {"dit": {("single_block", 3): print}},
                                  "rope_options": {"scale_x": 2.0}})
    assert len(found) == 4 and "a model patch 'some_future_hook'" in found and "ScaleROPE" in found[-1]


def test_forward_leaves_comfyuis_transformer_options_as_it_found_them(parts):
    patcher, adapter = parts[0], parts[1]
    flux = patcher.model.diffusion_model
    opts = {"patches": {}, "cond_or_uncond": [0]}
    x = torch.randn(1, 16, 4, 4)
    refs = torch.randn(1, 2, 16, 4, 4)
    with torch.no_grad():
        refany3d_forward(flux, adapter, x, x, refs, refs, torch.full((1,), 0.5), torch.randn(1, 3, CTX),
                         torch.randn(1, POOLED), torch.full((1,), 3.5), transformer_options=opts)
    assert opts == {"patches": {}, "cond_or_uncond": [0]}


def test_adapter_weights_are_loaded_counted_and_unloaded_with_the_model(parts):
    """The adapter's compute-device copy belongs to ComfyUI's model management: sampling loads it as an
    additional model of the patched clone (counted at its real size), and unloading the models moves
    it to the offload device: here "meta", so the copy on the load device is provably gone."""
    import comfy.model_management as mm
    import comfy.model_patcher

    from model_patches import AdapterWeights
    _, adapter, refs, cond = parts
    own = tiny.build_flux(hidden_size=D, num_heads=2, depth=1, depth_single_blocks=1, context_in_dim=CTX,
                          vec_in_dim=POOLED, seed=0)  # its weights end on "meta": not the shared fixture
    model = comfy.model_patcher.ModelPatcher(own.model, load_device=torch.device("cpu"),
                                             offload_device=torch.device("meta"))
    patched = apply_refany3d(model, adapter, *refs, image_guidance=2.0)
    weights = patched.get_additional_models_with_key("refany3d")[0]
    module = weights.model
    assert isinstance(module, AdapterWeights) and module is patched.get_wrappers("diffusion_model", "refany3d")[0].adapter
    assert weights.model_size() == module.nbytes() > 0
    mm.unload_all_models()
    try:
        ksample(patched, cond, torch.zeros(1, 16, 4, 8), steps=1)
        loaded = [m.model.model for m in mm.current_loaded_models]
        assert module in loaded and own.model in loaded  # loaded together, counted by ComfyUI
        assert module.loras["domain"]["img_in"][0].device.type == "cpu"
        mm.unload_all_models()
        assert module not in [m.model.model for m in mm.current_loaded_models]
        assert {p.device.type for p in module.parameters()} == {"meta"}  # no copy left on the load device
    finally:
        mm.unload_all_models()


# ---------------------------------------------------------------------------------------------
# issue 10, cases 3 and 9: guidance that is not a number, latent halves Flux cannot patch, provenance

def test_non_finite_image_guidance_is_refused(parts):
    patcher, adapter, refs, _ = parts
    for s in (float("nan"), float("inf")):
        with pytest.raises(RefAny3DError, match=f"image guidance must be a finite number .* got {s}"):
            apply_refany3d(patcher, adapter, *refs, image_guidance=s)


def test_halves_flux_cannot_patch_are_named(parts):
    patcher, adapter, refs, cond = parts
    model = apply_refany3d(patcher, adapter, *refs)
    with pytest.raises(RefAny3DError, match=r"latent is 10×4 \(latent pixels\), so each half .* is 5×4; .* one image "
                                            r"of 40×32 px is not a multiple of 16 px"):
        ksample(model, cond, torch.zeros(1, 16, 4, 10), steps=1)
    with pytest.raises(RefAny3DError, match=r"each half .* is 4×5"):
        ksample(model, cond, torch.zeros(1, 16, 5, 8), steps=1)
    rgb, pm = split_joined(torch.zeros(1, 16, 5, 10))  # Split Latent (no patch size) splits them for decoding
    assert rgb.shape[-1] == pm.shape[-1] == 5


def test_refany3d_samplings_are_recorded_and_plain_ones_are_not(parts):
    """The OUTER_SAMPLE wrapper records what it returns and the last denoised estimate (the x0 that
    SamplerCustomAdvanced hands out as denoised_output); the fingerprint survives a float16 copy."""
    import comfy.sample
    from model_patches.provenance import fingerprint, sampled_by_refany3d
    patcher, adapter, refs, cond = parts
    model = apply_refany3d(patcher, adapter, *refs, image_guidance=1.0)
    latent = torch.zeros(1, 16, 4, 8)
    x0 = {}

    def callback(step, denoised, x, total):
        x0["last"] = denoised
    noise = comfy.sample.prepare_noise(latent, 3)
    out = comfy.sample.sample(model, noise, 2, 1.0, "euler", "simple", cond, cond, latent, seed=3,
                              disable_pbar=True, callback=callback)
    assert sampled_by_refany3d(out) and sampled_by_refany3d(out.clone().half())
    assert sampled_by_refany3d(model.model.process_latent_out(x0["last"].cpu()))
    plain, _ = ksample(patcher, cond, latent, steps=2, seed=3)
    assert not sampled_by_refany3d(plain) and not sampled_by_refany3d(torch.zeros(1, 16, 4, 8))
    assert fingerprint(out) != fingerprint(plain) and fingerprint([1, 2]) is None
