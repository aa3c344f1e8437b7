"""Encoded training sets (issue 11): a dataset encoded once into safetensors shards of latents and
text conditioning, read back as training samples; atomic writing, cancel, and clear errors.

The dataset and the encoders here are fixtures that follow the contract: a list of raw samples with
describe()/fingerprint(), an "encoder" that average-pools 8×8 and projects 3 → 16 channels with a
fixed random matrix, and a "text encoder" that hashes words into fixed random vectors.
"""
from __future__ import annotations

import json

import pytest
import torch

from model_patches import RefAny3DError
from model_patches.trainable import TrainableAdapter, Unconditional
from training import EncodedDataset, EncodingCancelled, TrainConfig, Trainer, encode_dataset, is_encoded

CTX, POOLED = 24, 12
PROJ = torch.randn(16, 3, generator=torch.Generator().manual_seed(3))
WORDS = torch.randn(1000, CTX, generator=torch.Generator().manual_seed(4))


class ListDataset(list):
    def describe(self) -> str:
        return f"test dataset of {len(self)} samples"

    def fingerprint(self) -> str:
        return f"test-{len(self)}"


def raw_sample(i, size=32, ref=16, views=2, prompt=None):
    g = torch.Generator().manual_seed(100 + i)
    return {"name": f"s{i}", "prompt": prompt if prompt is not None else " ".join(["word"] * (i + 1)) + f" {i}",
            "image": torch.rand(size, size, 3, generator=g), "point_map": torch.rand(size, size, 3, generator=g),
            "mask": torch.ones(size, size), "refs_rgb": torch.rand(views, ref, ref, 3, generator=g),
            "refs_point_map": torch.rand(views, ref, ref, 3, generator=g)}


def encode_image(images):
    pooled = torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2), 8)  # [B,3,H/8,W/8]
    return torch.einsum("oc,bchw->bohw", PROJ, pooled)


def encode_text(prompt):
    ids = [sum(map(ord, w)) % 1000 for w in prompt.split()] or [0]
    context = WORDS[ids]
    return context, context.mean(0)[:POOLED]


def test_encode_and_read_back(tmp_path):
    ds = ListDataset(raw_sample(i) for i in range(5))
    calls = []
    enc = encode_dataset(ds, encode_image, encode_text, tmp_path / "enc", shard_size=2,
                         progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 5) for i in range(6)]
    assert len(enc) == 5 and enc.names == [f"s{i}" for i in range(5)]
    info = json.loads((tmp_path / "enc" / "encoded.json").read_text())
    assert info["format"] == "refany3d-encoded-dataset" and info["version"] == 1 and info["count"] == 5
    assert [s["file"] for s in info["shards"]] == [f"shard-0000{i}.safetensors" for i in range(3)]
    assert info["source"] == {"describe": "test dataset of 5 samples", "fingerprint": "test-5"}
    assert info["shapes"]["x0"] == [16, 4, 4] and info["shapes"]["refs"] == [2, 16, 2, 2]
    assert is_encoded(tmp_path / "enc", "test-5") and not is_encoded(tmp_path / "enc", "other")
    assert not list(tmp_path.glob(".*"))  # no temporary folder left
    # the samples: raw latents, contexts padded with zeros to the longest prompt
    longest = max(len(s["prompt"].split()) for s in ds)
    for i in (0, 4):
        s = enc[i]
        assert set(s) == {"x0_rgb", "x0_point_map", "refs_rgb", "refs_point_map", "context", "pooled"}
        torch.testing.assert_close(s["x0_rgb"], encode_image(ds[i]["image"][None])[0])
        torch.testing.assert_close(s["refs_point_map"], encode_image(ds[i]["refs_point_map"]))
        ctx, pooled = encode_text(ds[i]["prompt"])
        assert s["context"].shape == (longest, CTX) and s["context"].dtype == torch.float32
        torch.testing.assert_close(s["context"][:len(ctx)], ctx)
        assert float(s["context"][len(ctx):].abs().sum()) == 0
        torch.testing.assert_close(s["pooled"], pooled)
    un = enc.uncond()
    assert isinstance(un, Unconditional) and un.context.shape == (longest, CTX)
    torch.testing.assert_close(un.black_reference, torch.zeros(16, 2, 2))
    # latent_in is applied to every latent (and the black reference), not to the text
    shifted = EncodedDataset(tmp_path / "enc", latent_in=lambda x: (x - 0.5) * 2)
    torch.testing.assert_close(shifted[1]["refs_rgb"], (enc[1]["refs_rgb"] - 0.5) * 2)
    torch.testing.assert_close(shifted[1]["context"], enc[1]["context"])
    torch.testing.assert_close(shifted.uncond().black_reference, torch.full((16, 2, 2), -1.0))


def test_encoded_set_trains():
    """The loop takes an encoded set as it is (tiny Flux, one step)."""
    import tempfile

    from tools import tiny_models as tiny
    with tempfile.TemporaryDirectory() as tmp:
        enc = encode_dataset(ListDataset(raw_sample(i, size=16, ref=16, views=1) for i in range(2)), encode_image,
                             encode_text, f"{tmp}/enc")
        flux = tiny.build_flux_module(hidden_size=32, num_heads=2, context_in_dim=CTX, vec_in_dim=POOLED)
        trainer = Trainer(flux, TrainableAdapter.for_flux(flux, rank=2), enc, enc.uncond(),
                          TrainConfig(batch_size=2, checkpointing=False))
        loss = trainer.train_step()
    assert loss > 0 and trainer.step == 1


def test_reencoding_replaces_and_cancel_leaves_the_old(tmp_path):
    out = tmp_path / "enc"
    encode_dataset(ListDataset(raw_sample(i) for i in range(2)), encode_image, encode_text, out)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) == 3

    with pytest.raises(EncodingCancelled, match="after 2 of 4"):
        encode_dataset(ListDataset(raw_sample(i) for i in range(4)), encode_image, encode_text, out, cancel=cancel)
    assert len(EncodedDataset(out)) == 2 and not list(tmp_path.glob(".*"))

    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_dataset(ListDataset(raw_sample(i) for i in range(4)), encode_image, encode_text, out, cancel=interrupt)
    assert len(EncodedDataset(out)) == 2 and not list(tmp_path.glob(".*"))
    encode_dataset(ListDataset(raw_sample(i) for i in range(3)), encode_image, encode_text, out)
    assert len(EncodedDataset(out)) == 3 and not list(tmp_path.glob(".*"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photo.png").write_bytes(b"x")
    with pytest.raises(RefAny3DError, match="not an encoded dataset; choose an empty or new folder"):
        encode_dataset(ListDataset([raw_sample(0)]), encode_image, encode_text, tmp_path / "other")
    assert (tmp_path / "other" / "photo.png").exists()


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(RefAny3DError, match="does not exist"):
        EncodedDataset(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RefAny3DError, match="is not an encoded dataset: it has no encoded.json"):
        EncodedDataset(tmp_path / "plain")
    out = tmp_path / "enc"
    encode_dataset(ListDataset(raw_sample(i) for i in range(3)), encode_image, encode_text, out, shard_size=2)
    shard = out / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(RefAny3DError, match=r"shard-00001.safetensors has \d+ bytes, \d+ were written \(truncated"):
        EncodedDataset(out)
    shard.unlink()
    with pytest.raises(RefAny3DError, match="shard-00001.safetensors is missing; re-encode"):
        EncodedDataset(out)
    shard.write_bytes(b"\x00" * len(data))  # right size, damaged content
    with pytest.raises(RefAny3DError, match="shard-00001.safetensors cannot be read"):
        EncodedDataset(out)[2]
    info = json.loads((out / "encoded.json").read_text())
    (out / "encoded.json").write_text(json.dumps({**info, "version": 99}))
    with pytest.raises(RefAny3DError, match="version 99"):
        EncodedDataset(out)


def test_bad_samples_and_encoders_are_named(tmp_path):
    mixed = ListDataset([raw_sample(0), raw_sample(1), raw_sample(2, size=48)])
    with pytest.raises(RefAny3DError, match=r"sample 2 \('s2'\): latents of shape 16×6×6 .* before it have 16×4×4"):
        encode_dataset(mixed, encode_image, encode_text, tmp_path / "a")
    bad = raw_sample(1)
    bad["point_map"] = bad["point_map"][:16]
    with pytest.raises(RefAny3DError, match=r"sample 0 \('s1'\): photo 32×32 and point map 16×32 differ"):
        encode_dataset(ListDataset([bad]), encode_image, encode_text, tmp_path / "b")
    with pytest.raises(RefAny3DError, match=r"encode_image returned 2×4×4×4 .* expected 2×16×4×4"):
        encode_dataset(ListDataset([raw_sample(0)]), lambda x: encode_image(x)[:, :4], encode_text, tmp_path / "c")
    with pytest.raises(RefAny3DError, match="dataset is empty"):
        encode_dataset(ListDataset(), encode_image, encode_text, tmp_path / "d")
    with pytest.raises(RefAny3DError, match="encode_text must return"):
        encode_dataset(ListDataset([raw_sample(0)]), encode_image, lambda p: encode_text(p)[0], tmp_path / "e")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert not any((tmp_path / n).exists() for n in "abcde")
