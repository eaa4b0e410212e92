"""herd: build a Llama-4-style model herd end to end on Ray, tracked in MLflow."""

__version__ = "0.1.0"
