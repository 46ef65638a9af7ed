"""What every stage shares: logging set-up and loading ``params.yaml`` from the working directory."""

from __future__ import annotations

import logging

from birdops.config import Params, load_params


def setup() -> Params:
    """Configure logging and load ``params.yaml`` (DVC runs stages from the repository root)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return load_params("params.yaml")
