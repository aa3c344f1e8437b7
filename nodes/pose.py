"""RefAny3D Read Pose and RefAny3D Best Of: the camera behind a generated point map, a check that the
picture kept the asset's geometry, and the best of a batch (rendering/pose.py)."""
from __future__ import annotations

import json
import logging
import math

import comfy.utils
import torch
from comfy_api.latest import io

from ..rendering import AssetError
from ..rendering.overlay import overlay
from ..rendering.camera import camera_distance, target_camera
from ..rendering.pose import read_pose, render_at
from ..rendering.viewer import VIEWER_FRAMES, camera_to_load3d, load3d_to_camera
from .errors import NodeInputError
from .sockets import Asset, Camera, Pose

log = logging.getLogger("RefAny3D")


def _batch_mask(mask: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """A MASK as [n, h, w]: exactly one mask per point map (one mask for a whole batch would be
    silently wrong for every picture but the one it was made from)."""
    m = mask[None] if mask.ndim == 2 else mask
    if m.ndim != 3 or m.shape[-2:] != (h, w):
        raise AssetError(f"the mask is {tuple(m.shape[-2:])[::-1]} (W×H) but the point map is {w}×{h}: "
                         "use the mask of the same picture (e.g. RefAny3D Point Map To Mask)")
    if m.shape[0] != n:
        raise AssetError(f"{m.shape[0]} mask(s) for {n} point map(s): give one mask per point map, made from "
                         "the same batch (RefAny3D Point Map To Mask on the point maps)")
    return m


def read_batch(point_maps: torch.Tensor, masks: torch.Tensor, asset, y_rotation: float, progress=None):
    """One PoseReadout per image of the batch (checks once, here). An image whose camera cannot be
    read (e.g. no object in its mask) gets None and a warning, so the rest of a batch of seeds is
    still scored; when no image can be read, the first image's error is raised."""
    if point_maps.ndim != 4 or point_maps.shape[-1] < 3:
        raise AssetError(f"point_map must be an IMAGE batch N×H×W×3, got shape {tuple(point_maps.shape)}")
    if not math.isfinite(y_rotation):
        raise AssetError(f"y_rotation must be a finite number, got {y_rotation}")
    n, h, w = point_maps.shape[:3]
    masks = _batch_mask(masks, n, h, w)
    out, errors = [], []
    for i in range(n):
        try:
            out.append(read_pose(point_maps[i], masks[i], asset, y_rotation=y_rotation))
        except AssetError as e:
            if n == 1:
                raise
            out.append(None)
            errors.append(f"image {i}: {e}")
            log.warning("RefAny3D Read Pose: image %d of %d: %s (score 0)", i, n, e)
        if progress is not None:
            progress(i + 1, n)
    if len(errors) == n:
        raise AssetError(f"no camera could be read from any of the {n} images; {errors[0]}")
    return out


def score_of(pose) -> float:
    return 0.0 if pose is None else pose.score


SORT_KEYS = ("score", "distance to target")


def ranked(poses, sort_by: str, target) -> list[int]:
    """Indices of ``poses`` best first: by score, or by distance to the target camera (rotation, then eye
    distance; unread pictures last)."""
    if sort_by == "score":
        return sorted(range(len(poses)), key=lambda i: -score_of(poses[i]))
    if sort_by != "distance to target":
        raise NodeInputError(f"unknown sort_by '{sort_by}' (use one of {', '.join(SORT_KEYS)})")
    if target is None:
        raise NodeInputError("sort_by 'distance to target' needs the target input: connect the camera output of "
                             "RefAny3D Target Camera, or sort by score")

    def key(i):
        if poses[i] is None:
            return (1, math.inf, math.inf)
        d = camera_distance(poses[i].camera, target)
        return (0, round(d["rotation_deg"], 6), d["position_pct"])
    return sorted(range(len(poses)), key=key)


class RefAny3DReadPose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DReadPose",
            display_name="RefAny3D Read Pose",
            category="RefAny3D/check",
            description=("Reads the camera that took a generated picture from its point map: every object pixel "
                         "names a point of the asset, so focal length, rotation and position follow (OpenCV PnP "
                         "with RANSAC, a focal search and a robust refinement; the decoder's noise and the "
                         "silhouette's blend with the background are measured and left out). Re-renders the asset at that camera and scores how well the picture kept "
                         "the asset's geometry. One result per image of the batch."),
            inputs=[
                io.Image.Input("point_map", tooltip="Decoded point maps of the generated pictures (RefAny3D Split "
                                                    "Latent → VAE Decode, the point-map half), N×H×W×3."),
                io.Mask.Input("mask", tooltip="Object masks of the same pictures (RefAny3D Point Map To Mask): "
                                              "one per point map."),
                Asset.Input("asset", tooltip="The asset the pictures were generated from (RefAny3D Load 3D Asset)."),
                io.Float.Input("y_rotation", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="The y_rotation the reference views used (RefAny3D Render Views): it is "
                                       "undone before the camera is solved. A wrong value shows as a poor score."),
                io.Image.Input("photo", optional=True,
                               tooltip="The generated RGB pictures, one per point map, for the overlay (default: the "
                                       "point maps)."),
                Camera.Input("target", optional=True,
                             tooltip="The camera the pictures were meant to have (RefAny3D Target Camera): each "
                                     "read camera's distance to it is reported (rotation in degrees, eye distance in "
                                     "% of the target's distance to the asset)."),
                io.Combo.Input("viewer_frame", options=list(VIEWER_FRAMES), default="fitted", optional=True,
                               tooltip="For the camera_info output: where core's Load 3D / Preview 3D viewer places "
                                       "the model (fitted: largest side 5 on the ground; file: its own "
                                       "coordinates), as in RefAny3D Target Camera."),
            ],
            outputs=[
                Pose.Output(display_name="pose", tooltip="The cameras and scores, for RefAny3D Best Of."),
                io.String.Output(display_name="camera_json",
                                 tooltip="One JSON object per image: OpenCV K/R/t, glTF/Blender camera_to_world "
                                         "and yfov (asset units), and the scores."),
                io.Image.Output(display_name="rerender_rgb", tooltip="The asset rendered at each read camera."),
                io.Image.Output(display_name="rerender_point_map", tooltip="Its point map."),
                io.Mask.Output(display_name="rerender_mask", tooltip="Its mask."),
                io.Image.Output(display_name="overlay",
                                tooltip="The re-rendered silhouette (outline and tint) over each picture."),
                io.Float.Output(display_name="score", is_output_list=True,
                                tooltip="Per image, in 0..1: (mask IoU)² × (1 − median 3D error / 8 % of the asset's "
                                        "size) × (1 − median point-map colour difference / 0.15), the silhouette's "
                                        "measured blend left out. Measured on 40 decoder-like point maps (soft "
                                        "silhouettes 1–3 px, noise 4/255, 10 % wrong pixels, 5 shapes covering 1–50 % "
                                        "of the frame): reads that found the camera scored 0.82–0.90; the same maps "
                                        "read against another asset at most 0.27. So: 0.75 or more, this asset's "
                                        "geometry; below 0.5, another shape or a wrong y_rotation; between, a "
                                        "doubtful read."),
                io.Load3DCamera.Output(display_name="camera_info", is_output_list=True,
                                       tooltip="Per image, the read camera as a Load 3D camera: core's Preview 3D "
                                               "shows the asset from the picture's viewpoint (same asset file)."),
            ],
        )

    @classmethod
    def execute(cls, point_map, mask, asset, y_rotation=0.0, photo=None, target=None,
                viewer_frame="fitted") -> io.NodeOutput:
        pbar = comfy.utils.ProgressBar(point_map.shape[0])
        poses = read_batch(point_map, mask, asset, float(y_rotation),
                           progress=lambda done, total: pbar.update_absolute(done, total))
        n, h, w = point_map.shape[:3]
        if photo is not None and tuple(photo.shape[:3]) != (n, h, w):
            raise AssetError(f"photo is {tuple(photo.shape[:3])} (N, H, W) but the point maps are {(n, h, w)}: give "
                             "the pictures of the same batch, one per point map")
        base = point_map if photo is None else photo
        rgb = torch.ones(n, h, w, 3)
        pm = torch.ones(n, h, w, 3)
        rmask = torch.zeros(n, h, w)
        for i, p in enumerate(poses):
            if p is not None and p.rerender is not None:
                rgb[i], pm[i], rmask[i] = p.rerender.rgb[0], p.rerender.point_map[0], p.rerender.mask[0]
        over = torch.stack([overlay(base[i].cpu(), rmask[i]) for i in range(n)])
        summary = [None if p is None else p.to_json() for p in poses]
        if target is not None:
            for entry, p in zip(summary, poses):
                if entry is not None:
                    entry["target_distance"] = camera_distance(p.camera, target)
        text = json.dumps(summary, indent=1)
        for i, p in enumerate(poses):
            if p is not None:
                log.info("RefAny3D Read Pose: image %d: score %.3f (mask IoU %.3f, median 3D error %.2f %%, inliers "
                         "%.0f %%), vertical fov %.1f°", i, p.score, p.iou, p.median_error_pct, 100 * p.inlier_ratio,
                         p.camera.fov)
        scores = [score_of(p) for p in poses]
        lines = [f"image {i}: score {s:.3f}" for i, s in enumerate(scores)]
        if target is not None:
            lines = [line if e is None else line + (f", {e['target_distance']['rotation_deg']:.1f}° and "
                                                    f"{e['target_distance']['position_pct']:.1f} % from the target")
                     for line, e in zip(lines, summary)]
        infos = [None if p is None else camera_to_load3d(p.camera, asset, viewer_frame) for p in poses]
        ui = {"text": lines, "refany3d_pose": summary}
        return io.NodeOutput(poses, text, rgb, pm, rmask, over, scores, infos, ui=ui)


class RefAny3DBestOf(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DBestOf",
            display_name="RefAny3D Best Of",
            category="RefAny3D/check",
            description=("Sorts a batch of generated pictures by how well each kept the asset's geometry (the score "
                         "of RefAny3D Read Pose) and keeps the best k: the automatic 'best seed' pick."),
            inputs=[
                io.Image.Input("images", tooltip="The generated RGB pictures, N×H×W×3."),
                io.Image.Input("point_maps", tooltip="Their decoded point maps, same order."),
                io.Mask.Input("masks", tooltip="Their object masks, same order."),
                io.Int.Input("top_k", default=1, min=1, max=4096,
                             tooltip="How many of the best to keep (more than the batch keeps all, sorted)."),
                Pose.Input("pose", optional=True,
                           tooltip="Scores from RefAny3D Read Pose on the same batch (else give the asset)."),
                Asset.Input("asset", optional=True,
                            tooltip="The asset, when no pose input is given: the cameras are read here."),
                io.Float.Input("y_rotation", default=0.0, min=-360.0, max=360.0, step=1.0, optional=True,
                               tooltip="With the asset input: the y_rotation the references used."),
                Camera.Input("target", optional=True,
                             tooltip="The camera the pictures were meant to have (RefAny3D Target Camera), for "
                                     "sorting by distance to it."),
                io.Combo.Input("sort_by", options=list(SORT_KEYS), default="score", optional=True,
                               tooltip="score: best kept geometry first. distance to target: nearest to the target "
                                       "camera first (smallest rotation, then smallest eye distance); pictures "
                                       "whose camera could not be read come last."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The best k pictures, best first."),
                io.Image.Output(display_name="point_maps", tooltip="Their point maps."),
                io.Mask.Output(display_name="masks", tooltip="Their masks."),
                io.String.Output(display_name="ranking",
                                 tooltip="JSON: the batch's indices from best to worst, with their scores."),
            ],
        )

    @classmethod
    def execute(cls, images, point_maps, masks, top_k=1, pose=None, asset=None, y_rotation=0.0, target=None,
                sort_by="score") -> io.NodeOutput:
        n = images.shape[0]
        if point_maps.shape[0] != n:
            raise NodeInputError(f"{n} images but {point_maps.shape[0]} point maps: connect the images and the "
                                 "point maps of the same generated batch")
        if pose is None:
            if asset is None:
                raise NodeInputError("RefAny3D Best Of needs the scores: connect the pose output of RefAny3D Read "
                                     "Pose, or the asset (it then reads the poses itself)")
            pose = read_batch(point_maps, masks, asset, float(y_rotation))
        if len(pose) != n:
            raise NodeInputError(f"{len(pose)} read poses for {n} images: connect the pose output of RefAny3D Read "
                                 "Pose run on the same batch")
        h, w = point_maps.shape[1:3]
        masks = _batch_mask(masks, n, h, w)
        order = ranked(pose, sort_by, target)[:max(1, int(top_k))]
        ranking = json.dumps([{"index": i, "score": score_of(pose[i])}
                              | ({} if target is None or pose[i] is None else camera_distance(pose[i].camera, target))
                              for i in order])
        idx = torch.tensor(order)
        return io.NodeOutput(images[idx], point_maps[idx], masks[idx], ranking,
                             ui={"text": [f"best: image {order[0]} (score {score_of(pose[order[0]]):.3f})"]})


class RefAny3DTargetCamera(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DTargetCamera",
            display_name="RefAny3D Target Camera",
            category="RefAny3D/camera",
            description=("The camera to generate from, chosen before generating: from numbers (the side the asset "
                         "is seen from, field of view, how much of the picture it fills, where it sits) or from core "
                         "Load 3D's viewer (its camera_info). Renders the asset's point map and mask at that camera "
                         "and gives the camera back as a Load 3D camera for core's Preview 3D."),
            inputs=[
                Asset.Input("asset", tooltip="The asset (RefAny3D Load 3D Asset)."),
                io.Int.Input("width", default=512, min=16, max=4096, step=16,
                             tooltip="Width of the picture to generate, in pixels."),
                io.Int.Input("height", default=512, min=16, max=4096, step=16,
                             tooltip="Height of the picture to generate, in pixels."),
                io.Float.Input("yaw", default=30.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="The side the asset is seen from, degrees about the vertical: 0 from +X, "
                                       "90 from +Z (as Render Views' orbit). Unused with camera_info."),
                io.Float.Input("pitch", default=15.0, min=-89.0, max=89.0, step=1.0,
                               tooltip="Degrees above (positive) or below the asset. Unused with camera_info."),
                io.Float.Input("fov", default=45.0, min=1.0, max=170.0, step=0.5,
                               tooltip="Vertical field of view, degrees. With camera_info: the viewer's field of "
                                       "view when its camera_info does not carry one (core's default is 35)."),
                io.Float.Input("fill", default=0.6, min=0.05, max=1.0, step=0.01,
                               tooltip="Share of the picture's height the asset's bounding sphere spans. Unused "
                                       "with camera_info."),
                io.Float.Input("x", default=0.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="Where the asset's centre appears, left (-1) to right (1) of the picture. "
                                       "Unused with camera_info."),
                io.Float.Input("y", default=0.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="Where the asset's centre appears, bottom (-1) to top (1) of the picture. "
                                       "Unused with camera_info."),
                io.Float.Input("y_rotation", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="The y_rotation of the reference views (RefAny3D Render Views): the point "
                                       "map's colours are turned the same way."),
                io.Combo.Input("viewer_frame", options=list(VIEWER_FRAMES), default="fitted",
                               tooltip="Where core's Load 3D viewer placed the model. fitted: scaled to a largest "
                                       "side of 5, resting on the ground (every model in ComfyUI 0.3.x's viewer; "
                                       "newer viewers after 'fit to viewer'). file: the file's own coordinates "
                                       "(newer viewers before 'fit to viewer'). Used for camera_info both ways."),
                io.Load3DCamera.Input("camera_info", optional=True,
                                      tooltip="Core Load 3D's camera_info: generate from the side the asset is "
                                              "shown there (load the same file in Load 3D). Replaces the numbers."),
            ],
            outputs=[
                Camera.Output(display_name="camera", tooltip="The camera, for the pack's nodes."),
                io.Load3DCamera.Output(display_name="camera_info",
                                       tooltip="The same camera for core's Preview 3D / Load 3D viewer."),
                io.Image.Output(display_name="point_map", tooltip="The asset's point map at the camera."),
                io.Mask.Output(display_name="mask", tooltip="Its mask (1 on the asset)."),
                io.Image.Output(display_name="rgb", tooltip="The asset rendered at the camera."),
            ],
        )

    @classmethod
    def execute(cls, asset, width=512, height=512, yaw=30.0, pitch=15.0, fov=45.0, fill=0.6, x=0.0, y=0.0,
                y_rotation=0.0, viewer_frame="fitted", camera_info=None) -> io.NodeOutput:
        if camera_info is not None:
            camera = load3d_to_camera(camera_info, asset, viewer_frame, fov=float(fov))
        else:
            camera = target_camera(float(yaw), float(pitch), float(fov), float(fill), float(x), float(y),
                                   aspect=int(width) / int(height))
        view = render_at(asset, camera, int(width), int(height), y_rotation=float(y_rotation))
        if float(view.mask.sum()) == 0:
            raise AssetError("the asset is not in the picture at this camera (it lies behind the camera or outside "
                             "the frame): turn the viewer towards it or change the numbers")
        info = camera_to_load3d(camera, asset, viewer_frame)
        text = (f"target camera: vertical fov {camera.fov:.1f}°, eye {[round(float(v), 3) for v in camera.eye]} "
                "(rendering frame)")
        return io.NodeOutput(camera, info, view.point_map, view.mask, view.rgb, ui={"text": [text]})


def held_steps(strength: float, sigmas) -> float:
    """The sigma above which the point-map half is held: the first ``strength`` share of the schedule's steps
    (sigmas[k] with k = round(strength · steps); all steps at 1, none at 0)."""
    steps = len(sigmas) - 1
    k = min(steps, max(0, round(strength * steps)))
    return float(sigmas[k])


def hold_while(strength: float):
    """A denoise_mask_function for core's sampler: the latent's noise mask while the step is among the held
    ones, then everything free."""
    def mask_at(sigma, denoise_mask, extra_options):
        if float(sigma.max()) > held_steps(strength, extra_options["sigmas"]):
            return denoise_mask
        return torch.ones_like(denoise_mask)
    return mask_at


class RefAny3DHoldPointMap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DHoldPointMap",
            display_name="RefAny3D Hold Point Map",
            category="RefAny3D/camera",
            is_experimental=True,
            description=("EXPERIMENTAL: generate from a chosen camera. Encodes the target point map (RefAny3D "
                         "Target Camera) with the VAE into the point-map half of the joined latent and holds that "
                         "half to it during the first part of sampling, through core's latent noise mask (any core "
                         "sampler), leaving the picture free. How strongly the picture follows the held point map "
                         "can only be judged with the real weights."),
            inputs=[
                io.Model.Input("model", tooltip="The model from RefAny3D Apply (or after ModelSamplingFlux)."),
                io.Vae.Input("vae", tooltip="The FLUX VAE (the one RefAny3D Apply uses)."),
                io.Latent.Input("samples", tooltip="The joined latent of RefAny3D Empty Latent (RGB left, point map "
                                                   "right)."),
                io.Image.Input("point_map", tooltip="The target point map (RefAny3D Target Camera), the size of ONE "
                                                    "generated picture."),
                io.Float.Input("strength", default=0.3, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of the sampling steps, from the first, during which the point-map "
                                       "half is held to the target (1: every step, the point map stays exactly the "
                                       "target; 0: not held)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model that releases the hold after the held "
                                                              "steps: sample with it."),
                io.Latent.Output(display_name="samples", tooltip="The joined latent with the held point-map half and "
                                                                 "its noise mask: sample it with the model above."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, samples, point_map, strength=0.3) -> io.NodeOutput:
        x = samples["samples"]
        if x.ndim != 4 or x.shape[-1] % 2:
            raise AssetError(f"samples must be a joined latent B×C×H×2W (RefAny3D Empty Latent), got {tuple(x.shape)}")
        if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
            raise AssetError(f"strength must be between 0 and 1, got {strength}")
        held = vae.encode(point_map[..., :3]).to(x)
        half = x.shape[-1] // 2
        if held.shape[1:] != (x.shape[1], x.shape[2], half):
            raise AssetError(f"the point map encodes to {tuple(held.shape[1:])} but the point-map half of the latent is "
                             f"{(x.shape[1], x.shape[2], half)}: give the target point map at the size of ONE "
                             "generated picture (RefAny3D Target Camera's width and height as Empty Latent's)")
        if held.shape[0] not in (1, x.shape[0]):
            raise AssetError(f"{held.shape[0]} point maps for a batch of {x.shape[0]}: give one, or one per picture")
        joined = x.clone()
        joined[..., half:] = held.expand(x.shape[0], -1, -1, -1)
        mask = torch.ones(x.shape[0], 1, x.shape[2], x.shape[3])
        mask[..., half:] = 0.0  # 0: keep the latent there (core's noise mask)
        patched = model.clone()
        patched.model_options["denoise_mask_function"] = hold_while(float(strength))
        return io.NodeOutput(patched, dict(samples, samples=joined, noise_mask=mask))


NODES = [RefAny3DReadPose, RefAny3DBestOf, RefAny3DTargetCamera, RefAny3DHoldPointMap]
