"""Reading images and writing keypoints in the formats the field uses."""
