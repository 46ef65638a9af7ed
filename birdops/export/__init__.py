"""ONNX export with the feature front end inside the graph, parity gates, Triton repository."""
