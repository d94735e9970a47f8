"""Property tests: hypothesis drives a model and the real thing side by side."""
