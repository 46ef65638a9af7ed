"""birdops: bird-species audio classification, versioned with DVC and served with onnxruntime."""

__version__ = "0.1.0"
