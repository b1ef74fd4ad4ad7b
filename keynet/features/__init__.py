"""Local features: Key.Net keypoints with an orientation and a descriptor, for matching pipelines.

Conventions (those of ``keynet.detector``, plus the angle):
- Coordinates: x right, y down, the centre of pixel (col u, row v) is at (u, v).
- Scale: the radius ``r`` in pixels of the keypoint's support (a kornia LAF's scale).
- Orientation: degrees in ``[0, 360)`` in OpenCV's sense: the keypoint's x axis points along
  ``(cos a, sin a)`` in image coordinates, i.e. clockwise on screen (``cv2.KeyPoint.angle``). kornia's
  LAF orientation turns the other way: ``ori = -a`` (``keynet.features.lafs``).
- Region: each keypoint is described over the square ``[-r, r]^2`` of its rotated frame; for
  OpenCV that is ``KeyPoint.size = r / 3`` (``keynet.features.descriptors``).

``Extractor`` runs the three stages; ``orientation`` and ``descriptors`` hold the parts.
"""

from .descriptors import Descriptor, PatchDescriptor, SIFTDescriptor, make_descriptor
from .extractor import Extractor
from .lafs import features_to_lafs, lafs_to_features
from .orientation import GradientOrientation, OriNetOrientation, Orientation, UprightOrientation, make_orientation

__all__ = [
    "Descriptor",
    "Extractor",
    "GradientOrientation",
    "OriNetOrientation",
    "Orientation",
    "PatchDescriptor",
    "SIFTDescriptor",
    "UprightOrientation",
    "features_to_lafs",
    "lafs_to_features",
    "make_descriptor",
    "make_orientation",
]
