"""sorter: an edge-device batch sorter for produce."""

__version__ = "0.1.0"
