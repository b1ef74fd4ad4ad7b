"""Pictures for people: keypoints on an image, inlier matches over an image pair, a model's top view.

Kept apart from the model and the detector; every picture is a BGR uint8 array for ``cv2.imwrite``.
"""

from .keypoints import draw_keypoints
from .matches import draw_matches
from .sfm import draw_top_view

__all__ = ["draw_keypoints", "draw_matches", "draw_top_view"]
