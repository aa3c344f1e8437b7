"""RefAny3DRenderViews: the reference views RefAny3D conditions on (docs/method.md §1), rendered in plain
PyTorch on ComfyUI's device."""
from __future__ import annotations

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from ..rendering import BACKENDS, MAX_VIEWS, PRESETS, AssetError, check_coverage, render_views, \
    view_angles
from ..rendering.camera import RELEASE_FRAMES
from .notify import report
from .sockets import Asset

PRESET_TOOLTIP = (
    "How the N orbit angles follow from N (views i = 0 … N−1). release: the release's pick of frames "
    f"k = i·⌊{RELEASE_FRAMES}/N⌋ of a {RELEASE_FRAMES}-frame orbit, angle k·{360 // RELEASE_FRAMES}° (N = 8: 0°, 42°, "
    f"84°, …, 294°; N = 6: 0°, 60°, …), so at most {RELEASE_FRAMES} views. even: angle i·360°/N, at most {MAX_VIEWS} views.")


class RefAny3DRenderViews(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DRenderViews",
            display_name="RefAny3D Render Views",
            category="RefAny3D/render",
            description=("Renders the asset's reference views exactly as the RefAny3D release did: unlit base "
                         "colour and point map (x,y,z of the asset's bounding box → R,G,B) on white, camera "
                         "orbiting at pitch 0, radius 4, fov 45°. Defaults reproduce the release."),
            inputs=[
                Asset.Input("asset", tooltip="An asset from RefAny3D Load 3D Asset."),
                io.Int.Input("num_views", default=8, min=1, max=MAX_VIEWS,
                             tooltip=f"Number of reference views N. The released weights were trained with 8. At "
                                     f"most {RELEASE_FRAMES} with the release preset, {MAX_VIEWS} with even."),
                io.Combo.Input("preset", options=list(PRESETS), default="release", tooltip=PRESET_TOOLTIP),
                io.Int.Input("resolution", default=512, min=16, max=4096, step=16,
                             tooltip="Width and height of each view in pixels; a multiple of 16 (the VAE needs "
                                     "it). The release used 512."),
                io.Float.Input("pitch", default=0.0, min=-89.0, max=89.0, step=0.5,
                               tooltip="Camera elevation in degrees (positive looks down from above). Release: 0."),
                io.Float.Input("y_rotation", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="Rotates the point-map coordinate frame about +Y (degrees): how the paper "
                                       "steers the generated view. Colours of the RGB views are unchanged."),
                io.Float.Input("radius", default=4.0, min=1.0, max=50.0, step=0.1,
                               tooltip="Camera distance from the asset's centre (the asset is scaled to a "
                                       "2-unit cube). Release: 4."),
                io.Float.Input("fov", default=45.0, min=1.0, max=120.0, step=0.5,
                               tooltip="Vertical field of view in degrees. Release: 45."),
                io.Combo.Input("backend", options=list(BACKENDS), default="pack", optional=True,
                               tooltip="pack: the pack's own renderer (pure PyTorch, always available). pytorch3d: "
                                       "PyTorch3D's rasterizer where it is installed (pip install "
                                       "easypytorch3d, built for torch 2.11); the same views, faster on CUDA."),
            ],
            outputs=[
                io.Image.Output(display_name="rgb", tooltip="Unlit base-colour views on white, N×H×W×3."),
                io.Image.Output(display_name="point_map",
                                tooltip="Point-map views (normalised x,y,z as R,G,B) on white, N×H×W×3."),
                io.Mask.Output(display_name="mask", tooltip="1 where the asset covers the pixel, N×H×W."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    # ComfyUI shows a validate_inputs message on every input the method takes, and checks no range of
    # those inputs itself. So it takes only num_views and preset, whose limit depends on both (the
    # release preset: at most 60 views); the other inputs get ComfyUI's own range checks on their own
    # widget, and what ranges cannot say (resolution a multiple of 16, finite floats) is refused by
    # rendering.render_views when the node runs, naming the input.
    @classmethod
    def validate_inputs(cls, num_views=None, preset=None) -> bool | str:
        try:
            view_angles(num_views if num_views is not None else 1, preset if preset is not None else "even")
        except AssetError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, asset, num_views=8, preset="release", resolution=512, pitch=0.0, y_rotation=0.0,
                radius=4.0, fov=45.0, backend="pack") -> io.NodeOutput:
        pbar = comfy.utils.ProgressBar(num_views)
        views = render_views(asset, num_views=num_views, preset=preset, resolution=resolution, pitch=pitch,
                             y_rotation=y_rotation, radius=radius, fov=fov, backend=backend,
                             device=comfy.model_management.get_torch_device(),
                             progress=lambda done, total: pbar.update_absolute(done, total))
        warning = check_coverage(views)  # AssetError when every view is blank
        n = views.mask.shape[0]
        text = report(cls.hidden.unique_id if cls.hidden else None, "Render Views",
                      warning or f"{n} view{'s' if n > 1 else ''} rendered: the asset is visible in each.",
                      warning=warning is not None)
        return io.NodeOutput(views.rgb, views.point_map, views.mask, ui=text)


NODES = [RefAny3DRenderViews]
