"""The one error type of the rendering library."""


class AssetError(ValueError):
    """A problem with the user's 3D asset or render options; the message is meant for the user."""
