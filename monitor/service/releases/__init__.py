"""Base-model releases: where new versions appear, the configuration they imply, the challenger jobs."""
