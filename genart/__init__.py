"""genart: declarative, config-driven CLIP-guided image generation."""

__version__ = "0.1.0"
