"""privbench: a privacy attack-and-defense benchmark for federated learning on clinical data."""

__version__ = "0.1.0"
