"""Zeroserve: self-hosted serverless model serving on Kubernetes."""

__version__ = "0.1.0"
