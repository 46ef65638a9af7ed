"""The model factory, pretrained loading and safetensors checkpoints."""
