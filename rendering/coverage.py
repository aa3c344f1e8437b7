"""Blank views: a view whose mask is all zero shows nothing of the asset (a flat asset seen edge-on,
e.g. a card at 0° and 180° by the 2-view release preset). RefAny3D would get an empty reference."""
from __future__ import annotations

import math

from .errors import AssetError

ADVICE = ("A flat or thin asset seen edge-on disappears: use more views or the 'even' preset so that other "
          "angles are seen, or tilt the camera with pitch (e.g. 20) if it lies flat.")


def blank_views(views) -> list[int]:
    """Indices of the views whose mask is all zero."""
    covered = views.mask.reshape(views.mask.shape[0], -1).amax(dim=1)
    return [i for i, c in enumerate(covered.tolist()) if c == 0]


def view_label(views, i: int) -> str:
    """'view 2 (180°)': index in the batch and orbit angle of its camera."""
    eye = views.cameras[i].eye.tolist()
    angle = math.degrees(math.atan2(eye[2], eye[0])) % 360
    return f"view {i} ({angle:.0f}°)"


def check_coverage(views) -> str | None:
    """None when every view shows the asset; a warning naming the blank views when some are blank;
    AssetError when all are."""
    blank = blank_views(views)
    if not blank:
        return None
    n = views.mask.shape[0]
    which = ", ".join(view_label(views, i) for i in blank)
    if len(blank) == n:
        raise AssetError(f"all {n} views are blank: nothing of the asset is visible in {which}. {ADVICE}")
    return (f"{len(blank)} of {n} views are blank (nothing of the asset is visible): {which}. RefAny3D gets an "
            f"empty reference there. {ADVICE}")
