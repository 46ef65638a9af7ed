"""Inference with onnxruntime: `birdops predict` and `birdops serve`. Nothing here imports torch."""
