"""The one user-facing error type of the model layer.

Every check of ``model_patches`` raises a :class:`RefAny3DError` (a ``ValueError``): the nodes show
its message as it is. The two subclasses only say where the problem was found.
"""


class RefAny3DError(ValueError):
    """A clear, user-facing error of RefAny3D's model layer."""


class AdapterError(RefAny3DError):
    """A RefAny3D weight file (or its pairing with a model) is not what the release defines."""


class RefAny3DInputError(RefAny3DError):
    """Inputs of :func:`~model_patches.forward.refany3d_forward` that do not fit together or do not fit the model."""
