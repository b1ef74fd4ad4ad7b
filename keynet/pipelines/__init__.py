"""End-to-end jobs over folders of images (what the ``keynet`` commands run)."""
