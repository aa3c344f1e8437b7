"""Custom socket types shared by the pack's nodes."""
from comfy_api.latest import io

# A loaded 3D asset (rendering.Asset): geometry, UVs, textures, point-map frame.
Asset = io.Custom("REFANY3D_ASSET")
# The released RefAny3D files, mapped onto ComfyUI's Flux names (model_patches.RefAny3DAdapter).
Adapter = io.Custom("REFANY3D_ADAPTER")
# Cameras read from point maps, one per image of a batch, with their scores (rendering.pose.PoseReadout).
Pose = io.Custom("REFANY3D_POSE")
# A camera in the rendering frame (rendering.camera.Camera), chosen before generating.
Camera = io.Custom("REFANY3D_CAMERA")
# A training set (training.datasets: a sequence of raw samples with describe() and fingerprint()).
TrainingData = io.Custom("REFANY3D_TRAINING_DATA")
# A training set encoded to latents and text conditioning (training.encoded.EncodedDataset).
EncodedData = io.Custom("REFANY3D_ENCODED_DATA")
# A loss history {"loss": [...]}, the socket core's Train LoRA and loss-graph nodes use.
LossMap = io.Custom("LOSS_MAP")
