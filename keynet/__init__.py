"""keynet: the Key.Net keypoint detector in PyTorch — model, detection, training, evaluation."""

from .detector import KeyNetDetector, keypoints_to_lafs
from .features import Extractor
from .io.image import ImageError, load_image
from .model import KeyNet, build_model

__all__ = ["Extractor", "KeyNet", "KeyNetDetector", "ImageError", "build_model", "keypoints_to_lafs", "load_image"]
__version__ = "0.1.0"
