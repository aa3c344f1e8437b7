"""The three training dataset sources (training/datasets.py, docs/method.md §6) on real files: release layout
with H.264 orbit videos, a folder per sample with rendered and cached references, the synthetic builder,
and every bad input with its message."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from model_patches.errors import RefAny3DError
from rendering import load_asset, render_views
from tools import assets_gen
from tools import training_fixtures as tf
from training.datasets import (
    CACHE_DIR,
    DatasetError,
    FolderDataset,
    ReleaseDataset,
    SyntheticDataset,
    open_dataset,
    release_frame_indices,
)

SIZE, REF, VIEWS = 64, 32, 8
OPTS = {"size": SIZE, "ref_size": REF, "views": VIEWS}


def q8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def check_sample(s: dict, views: int = VIEWS, size: int = SIZE, ref: int = REF) -> None:
    assert set(s) == {"name", "prompt", "image", "point_map", "mask", "refs_rgb", "refs_point_map"}
    assert isinstance(s["name"], str) and s["name"] and isinstance(s["prompt"], str) and s["prompt"]
    shapes = {"image": (size, size, 3), "point_map": (size, size, 3), "mask": (size, size),
              "refs_rgb": (views, ref, ref, 3), "refs_point_map": (views, ref, ref, 3)}
    for key, shape in shapes.items():
        t = s[key]
        assert tuple(t.shape) == shape, key
        assert t.dtype == torch.float32 and t.device.type == "cpu", key
        assert float(t.min()) >= 0 and float(t.max()) <= 1, key
    assert set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    assert 0 < float(s["mask"].mean()) < 1
    outside = s["mask"] == 0
    assert bool((s["point_map"][outside] == 1).all()), "point map background must be white"


# ---------------------------------------------------------------- release layout


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    return root, tf.write_release_dataset(root)


@pytest.fixture(scope="module")
def numbered_release(tmp_path_factory):
    """Flat frames whose grey level is 4·k: which frame became which reference survives H.264."""
    root = tmp_path_factory.mktemp("numbered")
    frames = tf.numbered_frames(60, 48)  # 48 px videos, resized to the 32 px references
    entry = tf.write_release_sample(root, "counter", rgb_frames=frames, coord_frames=255 - frames)
    tf.write_meta(root, [entry])
    return root


def test_release_samples(release):
    root, entries = release
    ds = ReleaseDataset(root, **OPTS)
    assert len(ds) == 2 and ds.names == ["mug", "lamp"]
    s = ds[0]
    check_sample(s)
    assert s["name"] == "mug" and s["prompt"] == "a photo of a box on a table"
    assert ds[-1]["name"] == "lamp"
    with pytest.raises(IndexError):
        ds[2]
    # the references are the orbit frames k = 0, 7, ..., 49, i.e. the release preset views (H.264 tolerance)
    idx = release_frame_indices(VIEWS)
    assert idx == [0, 7, 14, 21, 28, 35, 42, 49]
    rgb_frames, coord_frames = entries[0]["frames"]
    assert torch.allclose(torch.from_numpy(rgb_frames[idx]).float() / 255,
                          q8(render_views(tf.mesh_asset("box"), VIEWS, "release", REF).rgb), atol=1 / 255)
    err_rgb = (s["refs_rgb"] - torch.from_numpy(rgb_frames[idx]).float() / 255).abs().mean()
    err_pm = (s["refs_point_map"] - torch.from_numpy(coord_frames[idx]).float() / 255).abs().mean()
    assert err_rgb < 0.03 and err_pm < 0.03, (err_rgb, err_pm)
    # photo and point map: the PNGs through the same resize and crop (80x64 -> 64x80 -> centre 64x64)
    photo = np.array(Image.open(root / entries[0]["image"]))
    rgba = np.array(Image.open(root / entries[0]["pose_coord"]))
    assert photo.shape == (64, 80, 3) and rgba.shape == (64, 80, 4)
    crop = slice(8, 72)
    assert torch.allclose(s["image"], torch.from_numpy(photo[:, crop]).float() / 255, atol=1e-6)
    assert torch.equal(s["mask"], torch.from_numpy(rgba[:, crop, 3] > 127).float())
    obj = s["mask"] > 0
    assert torch.allclose(s["point_map"][obj], torch.from_numpy(rgba[:, crop, :3]).float()[obj] / 255, atol=1e-6)


@pytest.mark.parametrize("views", [8, 6, 3])
def test_release_reference_frames(numbered_release, views):
    s = ReleaseDataset(numbered_release, size=SIZE, ref_size=REF, views=views)[0]
    k = torch.tensor(release_frame_indices(views), dtype=torch.float32)
    assert k.tolist() == [i * (60 // views) for i in range(views)]
    assert s["refs_rgb"].shape == (views, REF, REF, 3)
    level = s["refs_rgb"].mean(dim=(1, 2, 3)) * 255
    assert torch.allclose(level, 4 * k, atol=1.5), (level, 4 * k)
    level_pm = s["refs_point_map"].mean(dim=(1, 2, 3)) * 255
    assert torch.allclose(level_pm, 255 - 4 * k, atol=1.5)


def test_release_fingerprint(release, tmp_path):
    root, _ = release
    a = ReleaseDataset(root, **OPTS)
    assert a.fingerprint() == ReleaseDataset(root, **OPTS).fingerprint()
    assert a.fingerprint() != ReleaseDataset(root, size=SIZE, ref_size=REF, views=4).fingerprint()
    assert "release" in a.describe() and "2 samples" in a.describe() and str(root) in a.describe()
    copy = shutil.copytree(root, tmp_path / "copy")
    before = ReleaseDataset(copy, **OPTS).fingerprint()
    (copy / "samples/mug/mug.json").write_text(json.dumps({"text": "another prompt, longer", "item": "box"}))
    after = ReleaseDataset(copy, **OPTS)
    assert after.fingerprint() != before and after[0]["prompt"] == "another prompt, longer"


# ---------------------------------------------------------------- centre crop keeps photo and point map aligned


@pytest.mark.parametrize("height,width,top,left", [(64, 96, 16, 40), (96, 64, 40, 16)])
def test_crop_alignment(tmp_path, height, width, top, left):
    sample = tmp_path / "d" / "marker"
    sample.mkdir(parents=True)
    tf.mesh_file(sample / "asset.glb")
    (sample / "prompt.txt").write_text("a marker")
    photo = np.full((height, width, 3), 128, np.uint8)
    photo[top:top + 8, left:left + 8] = (255, 0, 0)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[top:top + 8, left:left + 8] = (10, 200, 30, 255)
    tf.save_png(sample / "photo.png", photo)
    tf.save_png(sample / "point_map.png", rgba)
    s = FolderDataset(tmp_path / "d", size=32, ref_size=16, views=1)[0]
    # shorter side 64 -> 32 (scale 1/2), longer 96 -> 48, centre crop drops 8 on each side of the longer axis;
    # the antialiased resize blurs the marker's edges alike in both (the photo's green channel: 128 -> 0 on it)
    redness = 1 - s["image"][..., 1] / (128 / 255)
    expect = torch.zeros(32, 32, dtype=torch.bool)
    r, c = top // 2 - (8 if height > width else 0), left // 2 - (8 if width > height else 0)
    expect[r:r + 4, c:c + 4] = True
    assert torch.equal(redness > 0.5, expect)
    assert torch.equal(s["mask"] > 0, expect)
    inner = s["point_map"][r + 1:r + 3, c + 1:c + 3]
    assert torch.allclose(inner, (torch.tensor([10, 200, 30]) / 255.0).expand_as(inner), atol=1e-6)


# ---------------------------------------------------------------- a folder per sample


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tf.write_folder_dataset(tmp_path_factory.mktemp("folder"))


def test_folder_samples_render_references(folder, tmp_path):
    root = shutil.copytree(folder, tmp_path / "f")
    ds = FolderDataset(root, **OPTS)
    assert ds.names == ["lamp", "mug"]  # sorted sub-folders
    s = ds[1]
    check_sample(s)
    assert s["name"] == "mug" and s["prompt"] == "a photo of a box"
    views = render_views(load_asset(root / "mug" / "asset.glb"), VIEWS, "release", REF)
    assert torch.allclose(s["refs_rgb"], q8(views.rgb), atol=1e-6)
    assert torch.allclose(s["refs_point_map"], q8(views.point_map), atol=1e-6)
    photo = np.array(Image.open(root / "mug" / "photo.png"))
    assert torch.allclose(s["image"], torch.from_numpy(photo[:, 8:72]).float() / 255, atol=1e-6)


def test_folder_cache_is_used(folder, tmp_path):
    root = shutil.copytree(folder, tmp_path / "f")
    cache = root / CACHE_DIR
    assert not cache.exists()
    first = FolderDataset(root, **OPTS)[1]
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 1
    stored = load_file(str(files[0]))
    assert stored["rgb"].dtype == torch.uint8 and torch.equal(stored["rgb"].float() / 255, first["refs_rgb"])
    # the cache file is what a new dataset reads: replace its contents and they come back as they are
    marked = {"rgb": torch.full_like(stored["rgb"], 51), "point_map": torch.full_like(stored["point_map"], 204)}
    save_file(marked, str(files[0]))
    again = FolderDataset(root, **OPTS)
    s = again[1]
    assert torch.allclose(s["refs_rgb"], torch.full_like(s["refs_rgb"], 0.2))
    assert torch.allclose(s["refs_point_map"], torch.full_like(s["refs_point_map"], 0.8))
    # other options use their own cache entry
    FolderDataset(root, size=SIZE, ref_size=REF, views=4)[1]
    assert len(list(cache.glob("*.safetensors"))) == 2
    # a changed asset renders anew: the key is the asset's bytes
    tf.mesh_file(root / "mug" / "asset.glb", "sphere")
    s = FolderDataset(root, **OPTS)[1]
    views = render_views(load_asset(root / "mug" / "asset.glb"), VIEWS, "release", REF)
    assert torch.allclose(s["refs_rgb"], q8(views.rgb), atol=1e-6)
    assert len(list(cache.glob("*.safetensors"))) == 3
    # a damaged cache file is rendered again (and rewritten), not an error
    newest = max(cache.glob("*.safetensors"), key=os.path.getmtime)
    newest.write_bytes(b"not safetensors")
    s2 = FolderDataset(root, **OPTS)[1]
    assert torch.equal(s2["refs_rgb"], s["refs_rgb"])
    assert load_file(str(newest))["rgb"].shape == (VIEWS, REF, REF, 3)
    assert not [p for p in cache.iterdir() if ".tmp" in p.name]


def test_folder_fingerprint(folder, tmp_path):
    root = shutil.copytree(folder, tmp_path / "f")
    a = FolderDataset(root, **OPTS).fingerprint()
    assert a == FolderDataset(root, **OPTS).fingerprint()
    (root / "lamp" / "prompt.txt").write_text("a photo of a lamp, edited\n")
    assert FolderDataset(root, **OPTS).fingerprint() != a


# ---------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def assets():
    return [tf.mesh_asset("box"), tf.mesh_asset("low_poly")]


def test_synthetic_samples(assets):
    ds = SyntheticDataset(assets, count=4, seed=3, size=SIZE, ref_size=REF, views=4, names=["crate", "gem"])
    assert len(ds) == 4 and ds.names[2] == "synthetic-0002"
    boxes = []
    for i in range(3):
        s = ds[i]
        check_sample(s, views=4)
        assert s["prompt"] == f"a photo of {['crate', 'gem'][i % 2]}"
        # mask = the non-white point map pixels; the photo shows the background outside the mask
        assert torch.equal(s["mask"] > 0, (s["point_map"] < 1).any(-1))
        outside = s["mask"] == 0
        assert torch.equal(s["image"][outside], ds.background(i)[outside])
        assert float(s["image"][outside].std(0).max()) > 0.005  # a gradient, not a flat colour
        rows, cols = (s["mask"] > 0).nonzero().unbind(1)
        boxes.append(max(int(rows.max() - rows.min()), int(cols.max() - cols.min())) + 1)
        # references: the release preset views of that asset
        v = render_views(assets[i % 2], 4, "release", REF)
        assert torch.equal(s["refs_rgb"], v.rgb) and torch.equal(s["refs_point_map"], v.point_map)
    assert all(0.15 * SIZE <= b <= 0.95 * SIZE for b in boxes), boxes
    assert "synthetic" in ds.describe() and "crate" in ds.describe()


def test_synthetic_determinism(assets):
    a = SyntheticDataset(assets, count=3, seed=7, size=SIZE, ref_size=REF, views=2)
    b = SyntheticDataset(assets, count=3, seed=7, size=SIZE, ref_size=REF, views=2)
    c = SyntheticDataset(assets, count=3, seed=8, size=SIZE, ref_size=REF, views=2)
    sa, sb, sc = a[1], b[1], c[1]
    for key in ("image", "point_map", "mask", "refs_rgb", "refs_point_map"):
        assert torch.equal(sa[key], sb[key]), key
    assert torch.equal(a[2]["image"], a[2]["image"])  # the same index again, after others
    assert not torch.equal(sa["image"], sc["image"]) and not torch.equal(sa["image"], a[0]["image"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_synthetic_backgrounds(assets):
    colours = torch.tensor([[0.1, 0.2, 0.9], [0.8, 0.3, 0.1]])
    bgs = colours[:, None, None, :].expand(2, 40, 70, 3).clone()
    ds = SyntheticDataset(assets[:1], count=10, seed=0, size=SIZE, ref_size=REF, views=1, backgrounds=bgs)
    seen = set()
    for i in range(10):
        s = ds[i]
        outside = s["image"][s["mask"] == 0]
        match = [k for k in range(2) if torch.allclose(outside, colours[k].expand_as(outside), atol=1e-6)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {0, 1}
    # a list of differently sized backgrounds is accepted too
    ds2 = SyntheticDataset(assets[:1], count=1, size=SIZE, ref_size=REF, views=1,
                           backgrounds=[torch.rand(20, 30, 3), torch.rand(50, 16, 3)])
    check_sample(ds2[0], views=1)


# ---------------------------------------------------------------- open_dataset


def test_open_dataset(release, folder, tmp_path):
    assert isinstance(open_dataset("release", release[0], **OPTS), ReleaseDataset)
    assert isinstance(open_dataset("folder", folder, **OPTS), FolderDataset)
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    tf.mesh_file(shapes / "crate.glb", "box")
    tf.mesh_file(shapes / "gem.glb", "low_poly")
    tf.save_png(shapes / "backgrounds" / "sky.png", np.full((40, 40, 3), (20, 40, 250), np.uint8))
    ds = open_dataset("synthetic", shapes, count=2, size=SIZE, ref_size=REF, views=1)
    assert isinstance(ds, SyntheticDataset) and ds.asset_names == ["crate", "gem"] and len(ds.backgrounds) == 1
    assert ds[1]["prompt"] == "a photo of gem"
    assert len(open_dataset("synthetic", shapes, size=SIZE, ref_size=REF, views=1)) == 16
    assert len(open_dataset("synthetic", assets=[tf.mesh_asset()], count=3, size=SIZE)) == 3
    with pytest.raises(DatasetError, match="unknown dataset source 'photos'"):
        open_dataset("photos", folder)
    with pytest.raises(DatasetError, match="has no option resolution"):
        open_dataset("folder", folder, resolution=64)
    with pytest.raises(DatasetError, match="needs a folder"):
        open_dataset("release")
    with pytest.raises(DatasetError, match="needs assets"):
        open_dataset("synthetic", count=2)
    with pytest.raises(DatasetError, match="holds no 3D files"):
        open_dataset("synthetic", tmp_path / "shapes" / "backgrounds")


# ---------------------------------------------------------------- bad input


def test_bad_options(folder, assets):
    assert issubclass(DatasetError, RefAny3DError)
    with pytest.raises(DatasetError, match="size must be a multiple of 16"):
        FolderDataset(folder, size=50)
    with pytest.raises(DatasetError, match="ref_size must be a multiple of 16"):
        FolderDataset(folder, ref_size=0)
    with pytest.raises(DatasetError, match="views must be a whole number between 1 and 60"):
        FolderDataset(folder, views=61)
    with pytest.raises(DatasetError, match="at least one asset"):
        SyntheticDataset([], count=1)
    with pytest.raises(DatasetError, match="asset 0 is a str"):
        SyntheticDataset(["chair.glb"], count=1)
    with pytest.raises(DatasetError, match="count must be"):
        SyntheticDataset(assets, count=0)
    with pytest.raises(DatasetError, match="one string per asset"):
        SyntheticDataset(assets, count=1, names=["one"])
    with pytest.raises(DatasetError, match="must use only"):
        SyntheticDataset(assets, count=1, prompt_template="a {colour} {name}")
    with pytest.raises(DatasetError, match="background 0 must be an image"):
        SyntheticDataset(assets, count=1, backgrounds=[torch.rand(8, 8)])


def write_sample(root, name, **skip):
    """A small folder sample without the files named in ``skip``."""
    folder = root / name
    folder.mkdir(parents=True)
    photo, rgba = np.full((32, 32, 3), 90, np.uint8), np.zeros((32, 32, 4), np.uint8)
    rgba[8:20, 8:20] = (200, 100, 50, 255)
    if not skip.get("photo"):
        tf.save_png(folder / "photo.png", photo)
    if not skip.get("prompt"):
        (folder / "prompt.txt").write_text(f"a photo of {name}")
    if not skip.get("point_map"):
        tf.save_png(folder / "point_map.png", rgba)
    if not skip.get("asset"):
        tf.mesh_file(folder / "asset.glb")
    return folder


@pytest.mark.parametrize("missing,message", [
    ("photo", "'chair': no photo \\(photo.png"), ("prompt", "'chair': no prompt.txt"),
    ("point_map", "'chair': no point_map.png"), ("asset", "'chair': no asset file"),
])
def test_folder_missing_file(tmp_path, missing, message):
    write_sample(tmp_path, "armchair")
    write_sample(tmp_path, "chair", **{missing: True})
    with pytest.raises(DatasetError, match=f"1 of 2 samples are incomplete: {message}"):
        FolderDataset(tmp_path, size=32, ref_size=16, views=1)


def test_folder_bad_files(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        FolderDataset(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("loose files are ignored")
    (tmp_path / CACHE_DIR).mkdir()
    with pytest.raises(DatasetError, match="is empty: it needs one sub-folder per sample"):
        FolderDataset(tmp_path)
    opts = {"size": 32, "ref_size": 16, "views": 1}
    # two photos
    s = write_sample(tmp_path / "a", "table")
    tf.save_png(s / "image.jpg", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match="'table': 2 photo files \\(image.jpg, photo.png\\); keep one"):
        FolderDataset(tmp_path / "a", **opts)
    # photo and point map of different sizes
    s = write_sample(tmp_path / "b", "sofa")
    tf.save_png(s / "point_map.png", np.zeros((32, 40, 4), np.uint8))
    with pytest.raises(DatasetError, match="sample 'sofa': the photo photo.png is 32x32 but the point map "
                                           "point_map.png is 40x32"):
        FolderDataset(tmp_path / "b", **opts)
    # point map without alpha
    s = write_sample(tmp_path / "c", "stool")
    tf.save_png(s / "point_map.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match="sample 'stool': the point map .*point_map.png has no alpha channel"):
        FolderDataset(tmp_path / "c", **opts)
    # a photo that is not an image
    s = write_sample(tmp_path / "d", "bench")
    (s / "photo.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="sample 'bench': photo .*photo.png is not a readable image"):
        FolderDataset(tmp_path / "d", **opts)
    # a truncated photo: its header is fine, its pixels are not
    s = write_sample(tmp_path / "g", "cabinet")
    tf.save_png(s / "photo.png", np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assets_gen.truncated_copy(s / "photo.png", s / "photo.png", keep=0.5)
    ds = FolderDataset(tmp_path / "g", **opts)
    with pytest.raises(DatasetError, match="sample 'cabinet': photo .*photo.png does not decode"):
        ds[0]
    # an asset that does not load: found when the sample is read, named with its sample
    s = write_sample(tmp_path / "e", "desk")
    assets_gen.corrupt_glb(s / "asset.glb")
    ds = FolderDataset(tmp_path / "e", **opts)
    with pytest.raises(DatasetError, match="sample 'desk': the asset .*asset.glb does not load: "):
        ds[0]
    # an empty prompt
    s = write_sample(tmp_path / "f", "shelf")
    (s / "prompt.txt").write_text("  \n")
    with pytest.raises(DatasetError, match="sample 'shelf': .*prompt.txt is empty"):
        FolderDataset(tmp_path / "f", **opts)[0]


@pytest.fixture
def small_release(numbered_release, tmp_path):
    return shutil.copytree(numbered_release, tmp_path / "r")


def test_release_bad_meta(small_release):
    meta = small_release / "meta_data.json"
    entry = json.loads(meta.read_text())[0]
    cases = [
        (None, "has no meta_data.json"),
        ("{not json", "meta_data.json is not valid JSON"),
        (json.dumps({"a": 1}), "must hold a list of samples, got dict"),
        ("[]", "lists no samples: the dataset is empty"),
        (json.dumps(["x"]), "entry 0 must be an object"),
        (json.dumps([entry, {k: v for k, v in entry.items() if k != "coord"}]),
         "entry 1 \\(json 'samples/counter/counter.json'\\) lacks 'coord'"),
        (json.dumps([entry, entry]), "lists the same sample twice: entries 0 and 1 both have json 'samples/counter/counter.json'"),
        (json.dumps([{**entry, "video": "samples/counter/gone.mp4"}]),
         "1 of 1 samples have missing files: 'counter': missing video .*gone.mp4"),
    ]
    for text, message in cases:
        if text is None:
            meta.unlink()
        else:
            meta.write_text(text)
        with pytest.raises(DatasetError, match=message):
            ReleaseDataset(small_release, **OPTS)


def test_release_bad_files(small_release):
    folder = small_release / "samples" / "counter"
    ds = ReleaseDataset(small_release, **OPTS)
    # a video with too few frames
    tf.write_video(folder / "coord.mp4", tf.numbered_frames(30, 32))
    with pytest.raises(DatasetError, match="sample 'counter': the point-map orbit video .*coord.mp4 has 30 frames; "
                                           "the references are frames 0, 7, .*, 49 .* needs at least 50"):
        ds[0]
    assert ReleaseDataset(small_release, size=SIZE, ref_size=REF, views=1)[0]["refs_point_map"].shape[0] == 1
    # a video that does not decode
    (folder / "video.mp4").write_bytes(b"\0" * 64 + b"garbage" * 50)
    with pytest.raises(DatasetError, match="sample 'counter': the RGB orbit video .*video.mp4 does not decode"):
        ds[0]
    # the per-sample JSON without the prompt
    (folder / "counter.json").write_text(json.dumps({"item": "counter"}))
    with pytest.raises(DatasetError, match="sample 'counter': .*counter.json must hold an object with the prompt"):
        ds[0]
    (folder / "counter.json").write_text("{")
    with pytest.raises(DatasetError, match="sample 'counter': .*counter.json is not valid JSON"):
        ds[0]
    # photo and point map of different sizes, point map without alpha: when the dataset is opened
    tf.save_png(folder / "scene_coord_map.png", np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(DatasetError, match="sample 'counter': the photo image.png is 80x64 but the point map "
                                           "scene_coord_map.png is 64x64"):
        ReleaseDataset(small_release, **OPTS)
    tf.save_png(folder / "scene_coord_map.png", np.zeros((64, 80), np.uint8))
    with pytest.raises(DatasetError, match="has no alpha channel \\(mode L\\)"):
        ReleaseDataset(small_release, **OPTS)
