"""Pictures for people: keypoints on an image (and, as the pipeline grows, matches and models).

Kept apart from the model and the detector; every picture is a BGR uint8 array for ``cv2.imwrite``.
"""

from .keypoints import draw_keypoints

__all__ = ["draw_keypoints"]
