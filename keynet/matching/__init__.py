"""Matching local features between images: pairs to match, descriptor matchers, two-view geometry.

- ``pairs``: which image pairs to match (exhaustive, a list file, k nearest in capture order);
- ``matchers``: kornia's mutual nearest neighbour, ratio test and their combination, batched over pairs;
- ``geometry``: homography, fundamental and essential matrices with OpenCV's USAC (MAGSAC++), with
  their inlier masks.

Conventions as in ``keynet.io.hloc``: keypoints (N, 2) as (x, y) with pixel centres at integer
coordinates; a match list is ``matches0`` (N0,) int with -1 where keypoint i of image 0 is unmatched.
"""

from .geometry import TwoViewGeometry, estimate_essential, estimate_fundamental, estimate_homography
from .matchers import MATCHERS, Matcher
from .pairs import exhaustive_pairs, make_pairs, read_pairs, sequential_pairs, write_pairs

__all__ = [
    "MATCHERS",
    "Matcher",
    "TwoViewGeometry",
    "estimate_essential",
    "estimate_fundamental",
    "estimate_homography",
    "exhaustive_pairs",
    "make_pairs",
    "read_pairs",
    "sequential_pairs",
    "write_pairs",
]
