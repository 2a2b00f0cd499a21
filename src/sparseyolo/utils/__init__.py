"""Lowest layer: helpers every other layer may import. Imports nothing else from sparseyolo."""
