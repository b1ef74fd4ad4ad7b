"""End-to-end jobs over folders of images, behind the ``keynet`` commands: features, matches, COLMAP models."""
