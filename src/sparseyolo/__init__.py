"""sparseyolo: train, sparsify, quantize, export and benchmark anchor-based YOLO detectors."""

__version__ = "0.1.0"
