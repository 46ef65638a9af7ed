"""Recordings and their metadata: the embedded corpus, xeno-canto downloads, validation and splits."""
