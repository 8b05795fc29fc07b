"""jlcm-gguf: learned, grouped codebooks for GGUF models on phone CPUs."""

__version__ = "0.1.0"
