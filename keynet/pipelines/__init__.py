"""Multi-step pipelines behind the ``keynet`` commands (features, matches, COLMAP models)."""
