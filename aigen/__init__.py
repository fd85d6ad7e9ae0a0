"""aigen: a reproducible study of CNNs telling AI-generated images from real photographs."""

__version__ = "0.1.0"
