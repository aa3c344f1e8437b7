"""Where the reference cache is kept (issue 22) and its use from several threads (issue 17).

* The cache's size is known before anything is recorded, and it equals the bytes the entries then
  hold (K and V of every reference token, every block, every head).
* The placement follows the memory budget: on the compute device when the entries fit there, else
  in CPU memory, else not cached; limits count what the cache already holds.
* The three placements give the same sampled latents through ComfyUI's real KSampler: device and
  CPU memory bit for bit, not cached (the isolated-reference forward computing the references at
  every step) to float rounding; the decision reaches the patch's ``notify`` as text naming the
  placement and the size.
* One patch used by several threads at once (ComfyUI's multi-GPU clones run in threads and share
  the wrapper) gives each thread the results it gets alone; each compute device has its own cache.
"""
from __future__ import annotations

import threading

import pytest
import torch

from model_patches import apply_refany3d, load_adapter, refany3d_forward
from model_patches.cache import DEVICE, HOST, NONE, CacheSize, MemoryBudget, ReferenceCache, choose_placement
from model_patches.forward import cache_shape
from tools import tiny_models as tiny
from tools.release_files import release_state_dicts

D, HEADS, CTX, POOLED = 32, 2, 24, 12


@pytest.fixture(scope="module")
def parts():
    patcher = tiny.build_flux(hidden_size=D, num_heads=HEADS, depth=1, depth_single_blocks=2, context_in_dim=CTX,
                              vec_in_dim=POOLED, seed=0)
    sds = release_state_dicts(D, 1, 2, rank=4, seed=1)
    adapter = load_adapter(sds["reference"], sds["domain"], sds["domain_embedder"])
    g = torch.Generator().manual_seed(2)
    refs = [torch.randn(3, 16, 4, 6, generator=g) for _ in range(4)]  # rgb, pm, black rgb, black pm: N = 3
    refs[3] = refs[2].clone()
    cond = [[torch.randn(1, 5, CTX, generator=g), {"pooled_output": torch.randn(1, POOLED, generator=g),
                                                   "guidance": 3.5}]]
    return patcher, adapter, refs, cond


def inputs(b=1, seed=0, views=3):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g)
    return dict(x_rgb=r(b, 16, 4, 4), x_point_map=r(b, 16, 4, 4), refs_rgb=r(b, views, 16, 4, 6),
                refs_point_map=r(b, views, 16, 4, 6), timestep=torch.full((b,), 0.6), context=r(b, 5, CTX),
                pooled=r(b, POOLED), guidance=torch.full((b,), 3.5))


def entry_bytes(flux, views=3, h=4, w=6, samples=1, itemsize=4):
    """The size written out from the model's shape: blocks × K,V × heads × 2·N·(h/2)(w/2) tokens × head size."""
    blocks = len(flux.double_blocks) + len(flux.single_blocks)
    return samples * blocks * 2 * HEADS * 2 * views * (h // 2) * (w // 2) * (D // HEADS) * itemsize


def test_size_is_known_before_recording_and_matches_what_is_stored(parts):
    patcher, adapter, _, _ = parts
    flux = patcher.model.diffusion_model
    inp = inputs(b=2, seed=1)
    shape = cache_shape(flux, inp["refs_rgb"], torch.float32, torch.device("cpu"))
    size = CacheSize(2, shape["blocks"], shape["heads"], shape["tokens"], shape["head_dim"], shape["dtype"])
    assert size.bytes == entry_bytes(flux, samples=2) == 2 * 3 * 2 * 2 * 36 * 16 * 4
    assert "3 blocks × K,V × 2 heads × 36 reference tokens × 16, float32" in size.describe()
    cache = ReferenceCache(budget=MemoryBudget(ask_comfy=False))
    with torch.no_grad():
        refany3d_forward(flux, adapter, **inp, cached_references=True, reference_cache=cache)
    assert [d.size for d in cache.decisions] == [size]  # decided once, before the entries were recorded
    assert sum(e.nbytes for e in cache.entries) == size.bytes
    # a bf16 model's entries are half as big
    assert CacheSize(2, 3, 2, 36, 16, torch.bfloat16).bytes == size.bytes // 2


def test_placement_follows_the_budget():
    assert choose_placement(100, 100, 0) == DEVICE
    assert choose_placement(101, 100, 101) == HOST
    assert choose_placement(101, 100, 100) == NONE
    assert choose_placement(1, -5, -5) == NONE  # less free than the step needs: nothing fits


@pytest.mark.parametrize("device_gb, host_gb, expected", [(None, None, DEVICE), (0, None, HOST), (0, 0, NONE)])
def test_budget_places_entries_and_counts_what_is_held(parts, device_gb, host_gb, expected):
    patcher, adapter, _, _ = parts
    flux = patcher.model.diffusion_model
    one = entry_bytes(flux)
    limit = {None: None, 0: one - 1}  # "0" here: one byte short of one entry
    cache = ReferenceCache(budget=MemoryBudget(device=limit[device_gb], host=limit[host_gb], ask_comfy=False))
    with torch.no_grad():
        refany3d_forward(flux, adapter, **inputs(seed=2), cached_references=True, reference_cache=cache)
    assert cache.decisions[-1].placement == expected
    assert [e.placement for e in cache.entries] == ([] if expected == NONE else [expected])
    assert cache.held(DEVICE if expected == DEVICE else HOST) == (0 if expected == NONE else one)
    # a limit of exactly one entry takes the first sample on the device; the second goes to CPU memory
    both = ReferenceCache(budget=MemoryBudget(device=one, host=one, ask_comfy=False))
    with torch.no_grad():
        for seed in (3, 4, 5):
            refany3d_forward(flux, adapter, **inputs(seed=seed), cached_references=True, reference_cache=both)
    assert [d.placement for d in both.decisions] == [DEVICE, HOST, NONE]
    assert both.declined  # nothing more is tried in this run ...
    both.clear()
    assert not both.declined  # ... until the next one


def test_comfy_budget_on_a_cpu_device_is_the_free_memory_comfyui_reports(parts):
    import comfy.model_management as mm

    from model_patches.cache import HOST_MARGIN, comfy_room
    cpu = torch.device("cpu")
    dev, host = comfy_room(cpu, 1, 0)
    free = mm.get_free_memory(cpu) - HOST_MARGIN
    assert abs(dev - free) < 256 * 2 ** 20 and abs(host - free) < 256 * 2 ** 20  # the same memory, moments apart
    # the user's limit bounds ComfyUI's figure
    cache = ReferenceCache()
    assert MemoryBudget(device=1000, host=None).room(cache, cpu, 1)[0] == 1000


def ksample(model, cond, latent, steps=3, seed=0):
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", cond, cond, latent, seed=seed,
                               disable_pbar=True)


def test_three_placements_sample_the_same_latents_and_say_where_they_ran(parts):
    patcher, adapter, refs, cond = parts
    flux = patcher.model.diffusion_model
    latent = torch.zeros(1, 16, 4, 8)
    one_sample = entry_bytes(flux)  # ref + black pass: two samples of this size
    budgets = {DEVICE: MemoryBudget(), HOST: MemoryBudget(device=0), NONE: MemoryBudget(device=0, host=0)}
    outs, heard = {}, {}
    for where, budget in budgets.items():
        heard[where] = []
        model = apply_refany3d(patcher, adapter, *refs, image_guidance=2.0, cache_references=True,
                               cache_budget=budget, notify=lambda text, warn, w=where: heard[w].append((text, warn)))
        outs[where] = ksample(model, cond, latent, steps=3)
        patch = model.get_wrappers("diffusion_model", "refany3d")[0]
        cache = patch.cache
        assert [d.placement for d in cache.decisions] == [where]
        assert cache.decisions[0].size.bytes == 2 * one_sample
        assert (cache.misses, cache.hits) == ((1, 2) if where != NONE else (1, 0))
    torch.testing.assert_close(outs[HOST], outs[DEVICE], rtol=0, atol=0)  # the same numbers, kept elsewhere
    # not cached: the same math, the reference tokens computed again inside each step's sequence (other
    # matrix shapes than the cached step's, so equal to float rounding)
    torch.testing.assert_close(outs[NONE], outs[DEVICE], rtol=0, atol=1e-5)
    gb = f"{2 * one_sample / 2 ** 30:.2f} GB (2 samples × 3 blocks"
    assert heard[DEVICE] == [(heard[DEVICE][0][0], False)] and "reference cache on the compute device" in heard[DEVICE][0][0]
    assert "reference cache in CPU memory, brought in block by block" in heard[HOST][0][0] and not heard[HOST][0][1]
    assert "reference cache not kept, too big for the free memory" in heard[NONE][0][0] and heard[NONE][0][1]  # a warning
    assert all(gb in text for h in heard.values() for text, _ in h)


def test_one_patch_from_several_threads_gives_each_its_own_results(parts):
    patcher, adapter, refs, _ = parts
    flux = patcher.model.diffusion_model
    model = apply_refany3d(patcher, adapter, *refs, image_guidance=1.0, cache_references=True,
                           cache_budget=MemoryBudget(ask_comfy=False))
    patch = model.get_wrappers("diffusion_model", "refany3d")[0]
    samples = [inputs(seed=10 + i) for i in range(6)]
    with torch.no_grad():
        alone = [refany3d_forward(flux, adapter, **s, cached_references=True) for s in samples]
    results, errors = {}, []
    start = threading.Barrier(len(samples))

    def work(i):
        try:
            start.wait()
            with torch.no_grad():
                for _ in range(3):  # record, then reuse (or record again when another thread evicted it)
                    results[i] = refany3d_forward(flux, adapter, **samples[i], cached_references=True,
                                                  reference_cache=patch.cache_for("cpu"))
        except Exception as e:  # noqa: BLE001 - reported below with the thread's index
            errors.append((i, repr(e)))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(samples))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, expected in enumerate(alone):
        for x, y in zip(results[i], expected):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    cache = patch.cache_for(torch.device("cpu"))
    assert len(cache) <= cache.max_entries and cache.hits + cache.misses == 3 * len(samples)
    # one cache per compute device; a sampling run empties every one of them
    other = patch.cache_for("cuda:1")
    assert other is not cache and other is patch.cache_for(torch.device("cuda", 1))
    patch.clear_caches()
    assert len(cache) == 0


def test_apply_node_shows_where_the_cache_ran_and_how_big(comfy, tmp_path_factory):
    """Through the real server: the placement chosen from the node's limits, shown on RefAny3D Apply
    (and in the log) at the first step, and the same pictures from every placement."""
    import numpy as np
    from test_transformer_comfy import graph, load, provide_models, upload_asset
    server = comfy  # named apart from ComfyUI's own comfy package (comfy-import-guard reads comfy.<name>)
    sub = provide_models(server.models_dir)
    asset = upload_asset(server, tmp_path_factory.mktemp("cache-placement"))
    pictures, texts = {}, {}
    # the test model: 1 + 1 blocks, 24 heads of 128, two 64 px views (2·2·16 reference tokens), fp32 on the CPU
    size = 2 * 2 * 2 * 24 * 64 * 128 * 4  # ref + black samples × blocks × K,V × heads × tokens × head size × bytes
    for where, limits in ((DEVICE, (-1.0, -1.0)), (HOST, (0.0, -1.0)), (NONE, (0.0, 0.0))):
        g = graph(sub, asset, steps=2, cache=True, seed=4)
        g["apply"]["inputs"].update(cache_device_gb=limits[0], cache_cpu_gb=limits[1])
        result = server.run(g, timeout=600)
        assert result.status == "success", result.error_text() + server.log_text()[-3000:]
        texts[where] = result.node_texts("apply")
        pictures[where] = load(server.output_files(result, "save_rgb")[0])
    assert len(texts[DEVICE]) == 1 and "reference cache on the compute device" in texts[DEVICE][0]
    assert len(texts[HOST]) == 1 and "reference cache in CPU memory, brought in block by block" in texts[HOST][0]
    assert len(texts[NONE]) == 1 and "reference cache not kept, too big for the free memory" in texts[NONE][0]
    for t in texts.values():
        assert f"size {size / 2 ** 30:.2f} GB (2 samples × 2 blocks × K,V × 24 heads × 64 reference tokens" in t[0]
    assert "room on the device 0.0 GB" in texts[HOST][0]
    assert "RefAny3D Apply (node apply): reference cache not kept" in server.log_text()  # a warning in the log
    np.testing.assert_array_equal(pictures[HOST], pictures[DEVICE])
    assert np.abs(pictures[NONE] - pictures[DEVICE]).max() <= 2 / 255  # float rounding, then 8-bit pictures
