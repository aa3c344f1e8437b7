"""The error type of the node boundary.

A node raises :class:`NodeInputError` when its own inputs cannot be used as given: a wiring mistake
(two batches that are not the same batch, an output that must be connected and is not) or a file
named in a node's list that is not in its models folder. The message names the node's input and the
fix; ComfyUI shows it on the node as it is. Problems found deeper keep their layer's type
(``AssetError`` for the asset and rendering, ``RefAny3DError`` for the model layer and training).
"""


class NodeInputError(ValueError):
    """A node's inputs are wired or set in a way the node cannot use; the message is meant for the user."""
