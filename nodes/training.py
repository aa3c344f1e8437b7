"""Training nodes (docs/method.md §6): a training set, its encoding, RefAny3D Train and the release-format save.

The work is done by the plain library ``training/`` (datasets, encoding, the Trainer, checkpoints) on
``model_patches.trainable`` (the trainable adapter, the loss); these nodes check inputs, run the loop with
ComfyUI's progress bar, Cancel and previews, and place the files in models/refany3d/<name>/.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..model_patches import RefAny3DError, check_flux, check_transformer_options, load_adapter, validate_adapter
from ..model_patches.trainable import frozen_view
from ..rendering import join_inside
from ..training import RELEASE_DTYPES, TrainConfig, Trainer, datasets, option_table
from ..training import checkpoint as ckpt
from ..training import encoded as encoded_data
from . import folders
from .adapter import TRAINING_STATE_DIR
from .notify import show_on_node
from .sockets import Adapter, Asset, EncodedData, LossMap, TrainingData

CATEGORY = "RefAny3D/training"
SOURCES = {"synthetic": "synthetic", "sample folders": "folder", "release layout": "release"}
PREVIEW_T = 0.7


def run_name_problem(name) -> str | None:
    """Why ``name`` cannot name a folder in models/refany3d/, else None."""
    if not isinstance(name, str) or not name.strip():
        return "name is empty: give the run a name (its files go to models/refany3d/<name>/)"
    if "\x00" in name:
        return (f"name {name.replace(chr(0), '␀')!r} contains a NUL character (␀), which no folder name can hold: "
                "retype the name")
    if any(sep in name for sep in ("/", "\\", os.sep)) or name.strip() in (".", "..") or ".." in name \
            or name != name.strip():
        return (f"name {name!r} must be a plain folder name (no path separators, no '..', no leading or "
                "trailing spaces): the files go to models/refany3d/<name>/")
    return None


def run_folder(name: str) -> Path:
    problem = run_name_problem(name)
    if problem:
        raise RefAny3DError(problem)
    folders.register()
    return Path(folder_paths.get_folder_paths(folders.REFANY3D_FOLDER)[0]) / name


# ------------------------------------------------------------------------------------------------
# the dataset


#: the most files and folders the Training Dataset fingerprint looks at; a larger tree (a home folder linked into
#: input/ by mistake) is not walked further and the node simply runs again every time
MAX_FINGERPRINT_ENTRIES = 20000


def dataset_folder(folder: str) -> Path:
    """A dataset folder as typed on the node: a name inside ComfyUI's input folder (links inside it followed);
    absolute names, '..' and NUL are refused without a word about the server's other files."""
    name = folder.strip()
    path = join_inside(name, folder_paths.get_input_directory(), what="dataset folder", error=RefAny3DError)
    if not path.is_dir():
        raise RefAny3DError(f"dataset folder '{name}' not found in ComfyUI's input folder (or it is a file): put "
                            "the dataset there, or link it there, and name it relative to input/")
    return path


def folder_stamp(folder: Path, limit: int = MAX_FINGERPRINT_ENTRIES) -> str:
    """A digest of every file below ``folder`` (relative name, size, modification time), the reference cache
    left out; "" for a folder that cannot be read (the run then reports it). At most ``limit`` entries are
    looked at and a folder reached twice through links is walked once; a larger tree, or a Cancel during the
    walk, gives a fresh value each time (the node runs again rather than trusting a partial look)."""
    h = hashlib.sha256()
    seen, entries = set(), 0
    try:
        for root, dirs, files in os.walk(folder, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if d != datasets.CACHE_DIR)
            entries += len(dirs) + len(files)
            if entries > limit or comfy.model_management.processing_interrupted():
                return f"unbounded:{time.time_ns()}"
            for name in sorted(files):
                path = Path(root) / name
                st = path.stat()
                h.update(f"{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except OSError:
        return ""
    return h.hexdigest()


class RefAny3DTrainingDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DTrainingDataset",
            display_name="RefAny3D Training Dataset",
            category=CATEGORY,
            description=("A RefAny3D training set: samples of a photo, its scene point map and mask, a prompt and "
                         "the asset's reference views (RGB and point map). Three sources: synthetic (the asset "
                         "rendered at random poses over backgrounds, with a template prompt), sample folders "
                         "(one folder per sample: photo, prompt .txt, RGBA point map, asset file) and the "
                         "release's own layout (meta_data.json, photos, point maps, orbit videos)."),
            inputs=[
                io.Combo.Input("source", options=list(SOURCES), default="synthetic",
                               tooltip="synthetic: renders of the connected asset over backgrounds. sample folders: "
                                       "a folder with one sub-folder per sample. release layout: the RefAny3D "
                                       "release's dataset layout (meta_data.json)."),
                io.String.Input("folder", default="",
                                tooltip="The dataset folder for 'sample folders' and 'release layout', inside "
                                        "ComfyUI's input folder and named relative to it (a dataset elsewhere: link "
                                        "it into input/). Unused for synthetic."),
                io.Int.Input("count", default=64, min=1, max=100000,
                             tooltip="Synthetic only: number of samples (random poses) to render."),
                io.Int.Input("size", default=512, min=16, max=2048, step=16,
                             tooltip="Training size in pixels (photo, point map and reference views), a multiple "
                                     "of 16. The release: 512."),
                io.Int.Input("views", default=8, min=1, max=60,
                             tooltip="Number of reference views per sample (release preset). The release: 8."),
                # a fixed setting, not a per-run draw: no "control after generate" widget (the frontend adds
                # one to any input named seed unless told not to; randomize would re-render and re-encode)
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Synthetic only: seed of the poses and backgrounds."),
                io.String.Input("prompt_template", default="a photo of {name}",
                                tooltip="Synthetic only: the prompt of every sample; {name} is the asset's name."),
                Asset.Input("asset", optional=True,
                            tooltip="Synthetic only (required there): the asset to render, from RefAny3D Load 3D "
                                    "Asset."),
                io.Image.Input("backgrounds", optional=True,
                               tooltip="Synthetic only: background pictures, one drawn per sample (default: flat "
                                       "random colours)."),
            ],
            outputs=[TrainingData.Output(display_name="dataset",
                                         tooltip="The training set, for RefAny3D Encode Training Data.")],
        )

    @classmethod
    def fingerprint_inputs(cls, source=None, folder="", **_options):
        """For the folder sources: every file's name, size and time, so samples added, removed or edited in the
        folder are seen at the next run instead of ComfyUI handing back the cached dataset."""
        if SOURCES.get(source) == "synthetic" or not isinstance(folder, str) or not folder.strip():
            return ""
        try:
            return folder_stamp(dataset_folder(folder))
        except RefAny3DError:
            return ""  # the run says what is wrong with the name

    @classmethod
    def execute(cls, source, folder="", count=64, size=512, views=8, seed=0, prompt_template="a photo of {name}",
                asset=None, backgrounds=None) -> io.NodeOutput:
        if source not in SOURCES:
            raise RefAny3DError(f"unknown dataset source {source!r}: expected one of {', '.join(SOURCES)}")
        if size % 16:
            raise RefAny3DError(f"size must be a multiple of 16 (the VAE's 8× and Flux's 2×2 patches), got {size}")
        if SOURCES[source] == "synthetic":
            if asset is None:
                raise RefAny3DError("the synthetic source renders an asset: connect RefAny3D Load 3D Asset to the "
                                    "'asset' input (or choose 'sample folders' / 'release layout' with a folder)")
            ds = datasets.SyntheticDataset([asset], count, seed=seed, size=size, ref_size=size, views=views,
                                           backgrounds=backgrounds, prompt_template=prompt_template)
        else:
            if not folder or not folder.strip():
                raise RefAny3DError(f"the '{source}' source reads a folder: set 'folder' (a folder inside ComfyUI's "
                                    "input folder, named relative to it; link an outside dataset into it)")
            path = dataset_folder(folder)
            kind = datasets.FolderDataset if SOURCES[source] == "folder" else datasets.ReleaseDataset
            ds = kind(str(path), size=size, ref_size=size, views=views)
        if len(ds) == 0:
            raise RefAny3DError(f"the training set is empty ({ds.describe()})")
        first = ds[0]
        preview = torch.stack([first["image"][..., :3], first["point_map"][..., :3]]).float().clamp(0, 1)
        return io.NodeOutput(ds, ui=ui.PreviewImage(preview, cls=cls))


# ------------------------------------------------------------------------------------------------
# encoding


def _digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is not None:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def encodings_folder() -> Path:
    return Path(folder_paths.get_output_directory()) / "refany3d_encoded"


def text_encoder(clip):
    def encode_text(prompt: str):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        pooled = cond[0][1].get("pooled_output")
        return cond[0][0][0], (pooled[0] if pooled is not None else None)
    return encode_text


def image_encoder(vae):
    def encode_image(images):
        return vae.encode(images[..., :3])
    return encode_image


class RefAny3DEncodeTrainingData(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DEncodeTrainingData",
            display_name="RefAny3D Encode Training Data",
            category=CATEGORY,
            description=("Encodes a training set once: photos, point maps and reference views to VAE latents, "
                         "prompts (and the empty prompt for dropout) to text conditioning, written as safetensors "
                         "shards in output/refany3d_encoded/<key>/ (the folder is shown on the node; the command line "
                         "python -m training --data <folder> trains on it too). Training then needs neither the VAE nor the text "
                         "encoders in memory. An encoding of the same data with the same VAE and text encoder "
                         "is re-used."),
            inputs=[
                TrainingData.Input("dataset", tooltip="The training set from RefAny3D Training Dataset."),
                io.Vae.Input("vae", tooltip="The Flux VAE (ae.safetensors) the model will be trained with."),
                io.Clip.Input("clip", tooltip="The Flux text encoders (CLIP-L and T5-XXL, e.g. DualCLIPLoader, "
                                              "type flux)."),
            ],
            outputs=[EncodedData.Output(display_name="encoded",
                                        tooltip="The encoded training set, for RefAny3D Train.")],
            hidden=[io.Hidden.unique_id],
        )

    #: the encoding folders this node handed out in this server's life
    handed_out: set[Path] = set()

    @classmethod
    def fingerprint_inputs(cls, **_inputs):
        """Unchanged while every encoding this node handed out is intact; an encoding damaged or removed since
        (a truncated shard) makes ComfyUI run the node again, which then encodes anew instead of handing back
        the damaged one from its cache."""
        if all(encoded_data.is_encoded(folder) for folder in cls.handed_out):
            return ""
        return f"damaged:{time.time_ns()}"

    @classmethod
    def execute(cls, dataset, vae, clip) -> io.NodeOutput:
        node_id = cls.hidden.unique_id if cls.hidden else None
        encode_image, encode_text = image_encoder(vae), text_encoder(clip)
        # the cache key: the data, and what this VAE and text encoder make of a fixed probe
        probe_ctx, probe_pooled = encode_text("refany3d probe")
        probe_img = encode_image(torch.linspace(0, 1, 16 * 16 * 3).view(1, 16, 16, 3))
        key = hashlib.sha256(f"{dataset.fingerprint()}:{_digest(probe_ctx, probe_pooled, probe_img)}".encode())
        folder = encodings_folder() / key.hexdigest()[:24]
        if encoded_data.is_encoded(folder, dataset.fingerprint()):
            show_on_node(node_id, f"re-used the encoding in {folder}")
            cls.handed_out.add(folder)
            return io.NodeOutput(encoded_data.EncodedDataset(folder))
        pbar = comfy.utils.ProgressBar(len(dataset))
        encoded = encoded_data.encode_dataset(
            dataset, encode_image, encode_text, folder,
            progress=lambda done, total: pbar.update_absolute(done, total),
            cancel=comfy.model_management.throw_exception_if_processing_interrupted)
        show_on_node(node_id, f"{len(encoded)} samples encoded in {folder}")
        cls.handed_out.add(folder)
        return io.NodeOutput(encoded)


# ------------------------------------------------------------------------------------------------
# training


def compute_dtype(model) -> torch.dtype:
    base = model.model
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    return torch.bfloat16 if dtype not in (torch.float32, torch.float16, torch.bfloat16) else dtype


def load_model(model) -> None:
    """The whole model on the compute device (training touches every block each step)."""
    try:
        comfy.model_management.load_models_gpu([model], force_full_load=True)
    except TypeError:  # a ComfyUI without force_full_load
        comfy.model_management.load_models_gpu([model])


def preview_images(flux, adapter, data, model, vae) -> torch.Tensor | None:
    """One-step prediction x0 = x_t − t·v at t = PREVIEW_T for the first training sample (RGB, point map),
    decoded with ``vae``: IMAGE [2, H, W, 3]; None without a VAE."""
    if vae is None:
        return None
    from ..model_patches.modulation import REF_TIMESTEP
    from ..model_patches.trainable import TRAIN_GUIDANCE, training_mode
    s = data[0]
    dev = next(flux.parameters()).device
    g = torch.Generator().manual_seed(0)
    t = torch.full((1,), PREVIEW_T)
    xs = [s[k][None].float() for k in ("x0_rgb", "x0_point_map")]
    xt = [((1 - PREVIEW_T) * x + PREVIEW_T * torch.randn(x.shape, generator=g)).to(dev, s["x0_rgb"].dtype) for x in xs]
    pooled = s.get("pooled")
    with torch.no_grad(), training_mode():
        v = refany3d_forward_call(flux, adapter, xt, s, t, pooled, dev, REF_TIMESTEP, TRAIN_GUIDANCE)
    x0 = torch.cat([(x.float() - PREVIEW_T * vv.float()) for x, vv in zip(xt, v)])
    latents = model.model.process_latent_out(x0.cpu())
    with torch.inference_mode():
        images = vae.decode(latents)
    return images.reshape(-1, *images.shape[-3:])[..., :3].float().cpu().clamp(0, 1)


def refany3d_forward_call(flux, adapter, xt, s, t, pooled, dev, ref_timestep, guidance):
    from ..model_patches import refany3d_forward
    dtype = xt[0].dtype
    return refany3d_forward(flux, adapter, xt[0], xt[1], s["refs_rgb"][None].to(dev), s["refs_point_map"][None].to(dev),
                            t.to(dev, dtype), s["context"][None].to(dev), None if pooled is None else pooled[None].to(dev),
                            torch.full((1,), guidance, device=dev), ref_timestep=ref_timestep, ref_guidance=guidance)


#: the one TrainConfig field the node names otherwise (kept for saved workflows): field -> input name
INPUT_NAMES = {"lr": "learning_rate"}


def node_settings() -> list:
    """The TrainConfig fields RefAny3D Train offers as inputs, in the table's order."""
    return [field for field in option_table() if field.metadata["node"]]


def config_input(field):
    """The node input of a TrainConfig field: its help as the tooltip, its default, choices and bounds. The
    learning rate's "unset" (None) is 0 on the node."""
    meta, name = field.metadata, INPUT_NAMES.get(field.name, field.name)
    tooltip = meta["help"][0].upper() + meta["help"][1:] + "."
    if meta["choices"]:
        return io.Combo.Input(name, options=list(meta["choices"]), default=field.default, tooltip=tooltip)
    if field.default is None or isinstance(field.default, float):
        return io.Float.Input(name, default=field.default or 0.0, min=meta["low"], max=meta["high"], step=0.00001,
                              tooltip=tooltip)
    # the seed is a fixed setting, not a per-run draw: no "control after generate" widget (the frontend adds one
    # to any input named seed unless told not to; randomize would train anew each time)
    return io.Int.Input(name, default=field.default, min=meta["low"], max=meta["high"], tooltip=tooltip,
                        control_after_generate=False if name == "seed" else None)


def config_of(inputs: dict) -> TrainConfig:
    """The TrainConfig of the node's inputs (defaults for those left out), checked: a bad value is an error that
    names the input."""
    values = {}
    for field in node_settings():
        name = INPUT_NAMES.get(field.name, field.name)
        value = inputs.get(name, field.default)
        choices = field.metadata["choices"]
        if choices and value not in choices:
            raise RefAny3DError(f"unknown {name} {value!r}: expected one of {', '.join(choices)}")
        values[field.name] = value
    lr = values["lr"]
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise RefAny3DError(f"learning_rate must be a finite number ≥ 0 (0: the optimizer's default), got {lr}")
    values["lr"] = (float(lr) or None) if lr is not None else None
    return TrainConfig(**values)


class RefAny3DTrain(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DTrain",
            display_name="RefAny3D Train",
            category=CATEGORY,
            description=("Trains the RefAny3D adapter (Reference-LoRA, Domain-LoRA, domain embedder) on an encoded "
                         "training set with the release's loss (docs/method.md §6), on one GPU with gradient "
                         "checkpointing; the FLUX.1 model itself is frozen and left unchanged. Progress and the "
                         "loss show on the node, a preview every few steps; Cancel writes a resumable state of "
                         "the last finished step to models/refany3d/<name>/training_state/ and stops. The "
                         "adapter output plugs straight into RefAny3D Apply; RefAny3D Save Adapter writes it."),
            inputs=[
                io.Model.Input("model", tooltip="The FLUX.1-dev model to train on (bf16 or fp8 weights); it is not "
                                                "modified."),
                EncodedData.Input("encoded", tooltip="The training set from RefAny3D Encode Training Data."),
                io.String.Input("name", default="my_refany3d",
                                tooltip="Run name: states go to models/refany3d/<name>/training_state/, saves to "
                                        "models/refany3d/<name>/. A plain folder name."),
                *(config_input(field) for field in node_settings()),
                io.Int.Input("preview_every", default=100, min=0, max=1000000,
                             tooltip="Every N steps a one-step prediction for the first sample (RGB and point map) "
                                     "is shown on the node; needs the vae input (0: never)."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue from the latest state in models/refany3d/<name>/training_state/ "
                                         "(same rank and optimizer). Off: a new run; an existing state is refused "
                                         "rather than mixed up with it."),
                Adapter.Input("adapter", optional=True,
                              tooltip="Start from this adapter (e.g. the release, from RefAny3D Load Adapter) "
                                      "instead of the release's fresh initialisation."),
                io.Vae.Input("vae", optional=True, tooltip="The Flux VAE, to decode the previews."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Off: a new run (resume off, or no state to resume) into a folder that "
                                         "already holds an adapter is refused, so nothing is replaced. On: the run's "
                                         "saves replace that adapter. A resumed run saves over its own files."),
            ],
            outputs=[
                Adapter.Output(display_name="adapter",
                               tooltip="The trained adapter, for RefAny3D Apply or RefAny3D Save Adapter."),
                LossMap.Output(display_name="loss_map",
                               tooltip="Loss history {'loss': [...]} (one value per step, the whole run), for "
                                       "core's loss-graph node."),
                io.Int.Output(display_name="steps", tooltip="The run's step count."),
            ],
            # an output node: a run on its own (states every save_every steps, previews) is a complete job
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, name=None) -> bool | str:
        return (run_name_problem(name) if name is not None else None) or True

    @classmethod
    def execute(cls, model, encoded, name, preview_every=100, resume=False, adapter=None, vae=None, overwrite=False,
                **settings) -> io.NodeOutput:
        from ..model_patches.trainable import TrainableAdapter
        node_id = cls.hidden.unique_id if cls.hidden else None
        out_dir = run_folder(name)
        state_dir = out_dir / TRAINING_STATE_DIR
        config = config_of(settings)
        steps = config.steps
        check_flux(model)
        check_transformer_options(model.model_options.get("transformer_options"), "RefAny3D Train")
        existing = ckpt.state_dirs(state_dir)
        if existing and not resume:
            raise RefAny3DError(f"models/refany3d/{name}/{TRAINING_STATE_DIR}/ already holds a training state "
                                f"({existing[-1].name}): turn 'resume' on to continue that run, or choose another "
                                "name (or delete the folder) to start a new one")
        if not existing:
            refuse_to_replace(out_dir, name, overwrite)
        load_model(model)
        flux = check_flux(model)
        if adapter is not None:
            validate_adapter(adapter, flux)
        with torch.inference_mode(False), frozen_view(flux):
            data = encoded.in_model_space(model.model.process_latent_in, compute_dtype(model))
            if adapter is not None:
                trainable = TrainableAdapter.from_adapter(adapter)
            else:
                trainable = TrainableAdapter.for_flux(flux, rank=config.rank, seed=config.seed)
            report = NodeReport(node_id, steps, preview_every, lambda: preview_images(flux, trainable, data, model, vae))
            trainer = Trainer(flux, trainable, data, data.uncond(), config, out_dir=state_dir, release_dir=out_dir,
                              cancel=comfy.model_management.throw_exception_if_processing_interrupted,
                              on_step=report.step)
            trainer.state_name = lambda path: f"models/refany3d/{name}/{TRAINING_STATE_DIR}/{path.name}"
            if resume and existing:
                resume_from(trainer, state_dir, name)
            elif resume:
                show_on_node(node_id, f"no state in models/refany3d/{name}/{TRAINING_STATE_DIR}/: a new run")
            report.start(trainer.step)
            try:
                trainer.train()
            except comfy.model_management.InterruptProcessingException:
                trainer.save_unsaved(sync=False)
                show_on_node(node_id, f"RefAny3D Train: cancelled; state of step {trainer.step} saved in "
                                      f"models/refany3d/{name}/{TRAINING_STATE_DIR}/ (resume to continue)")
                raise
            trainer.save_unsaved()
            sds = trainable.to_release_state_dicts(torch.float32)
        result = load_adapter(sds["reference"], sds["domain"], sds["domain_embedder"])
        losses = {"loss": [float(x) for x in trainer.losses]}
        previews = report.previews
        return io.NodeOutput(result, losses, trainer.step,
                             ui=ui.PreviewImage(torch.cat(previews), cls=cls) if previews else None)


class NodeReport:
    """The Trainer's ``on_step`` on the node: ComfyUI's progress bar, the loss as text and, every
    ``preview_every`` steps, a preview (``make_preview()``: IMAGE or None) on the bar and kept for the UI."""

    def __init__(self, node_id, steps: int, preview_every: int, make_preview):
        self.node_id, self.steps, self.preview_every, self.make_preview = node_id, steps, preview_every, make_preview
        self.bar = comfy.utils.ProgressBar(steps)
        self.previews: list[torch.Tensor] = []

    def start(self, step: int) -> None:
        self.bar.update_absolute(min(step, self.steps), self.steps)

    def step(self, step: int, loss: float) -> None:
        preview = None
        if self.preview_every and step % self.preview_every == 0:
            images = self.make_preview()
            if images is not None:
                self.previews.append(images)
                preview = ("JPEG", to_pil(torch.cat(list(images), dim=1)), 512)
        show_on_node(self.node_id, f"RefAny3D Train: step {step}/{self.steps}, loss {loss:.4f}")
        self.bar.update_absolute(step, self.steps, preview)


def refuse_to_replace(folder: Path, name: str, overwrite: bool) -> None:
    """An adapter already in ``folder`` is replaced only when the user said so."""
    present = ckpt.adapter_files(folder)
    if present and not overwrite:
        raise RefAny3DError(f"models/refany3d/{name}/ already holds an adapter ({', '.join(present)}); nothing was "
                            "written: choose another name, or turn 'overwrite' on to replace that adapter")


def resume_from(trainer, state_dir: Path, name: str) -> None:
    """Loads the latest state, with a clear error when it does not fit this run."""
    try:
        trainer.load(state_dir)
    except RefAny3DError:
        raise  # the trainer's own message names the state and the field
    except (RuntimeError, KeyError, ValueError) as e:
        raise RefAny3DError(f"the state in models/refany3d/{name}/{TRAINING_STATE_DIR}/ does not fit this run "
                            f"(another rank, optimizer or model width?): {e}") from None


def to_pil(image: torch.Tensor):
    from PIL import Image
    return Image.fromarray((image.clamp(0, 1) * 255).round().to(torch.uint8).numpy())


# ------------------------------------------------------------------------------------------------
# saving


class RefAny3DSaveAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DSaveAdapter",
            display_name="RefAny3D Save Adapter",
            category=CATEGORY,
            description=("Writes an adapter in the release format to models/refany3d/<name>/: default.safetensors "
                         "(Reference-LoRA), coord.safetensors (Domain-LoRA), both with the release's diffusers "
                         "keys, and domain_embedder.safetensors (optionally also the release's "
                         "domain_embedder.pth). RefAny3D Load Adapter lists them; the authors' code loads them."),
            inputs=[
                Adapter.Input("adapter", tooltip="The adapter to save (from RefAny3D Train or Load Adapter)."),
                io.String.Input("name", default="my_refany3d",
                                tooltip="Folder name in models/refany3d/ (a plain name: no path separators or "
                                        "'..'). A folder that already holds an adapter is replaced only with "
                                        "'overwrite' on."),
                io.Combo.Input("dtype", options=["bf16", "fp32"], default="bf16",
                               tooltip="bf16: as the release ships its files (half the size). fp32: full precision."),
                io.Boolean.Input("write_pth", default=False,
                                 tooltip="Also write domain_embedder.pth (a plain state dict, as the release ships "
                                         "it) for the authors' own code."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Off: a folder that already holds an adapter is refused (nothing is "
                                         "replaced). On: its adapter is replaced by this one (every adapter file of "
                                         "the folder: no old domain_embedder.pth stays beside new files)."),
            ],
            outputs=[],
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, name=None) -> bool | str:
        return (run_name_problem(name) if name is not None else None) or True

    @classmethod
    def execute(cls, adapter, name, dtype="bf16", write_pth=False, overwrite=False) -> io.NodeOutput:
        from ..model_patches.trainable import TrainableAdapter
        folder = run_folder(name)
        torch_dtype = RELEASE_DTYPES[dtype]
        refuse_to_replace(folder, name, overwrite)
        with torch.inference_mode(False):
            trainable = TrainableAdapter.from_adapter(adapter)
            paths = ckpt.save_release(trainable, folder, torch_dtype, write_pth=bool(write_pth))
        names = ", ".join(sorted(p.name for p in paths.values()))
        text = f"saved {names} in models/refany3d/{name}/"
        show_on_node(cls.hidden.unique_id if cls.hidden else None, text)
        return io.NodeOutput(ui=ui.PreviewText(text))


NODES = [RefAny3DTrainingDataset, RefAny3DEncodeTrainingData, RefAny3DTrain, RefAny3DSaveAdapter]
