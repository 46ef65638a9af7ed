"""Losses, augmentation and the trainer shared by every variant."""
