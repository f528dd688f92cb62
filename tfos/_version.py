"""Package version (both driver and executors)."""

__version__ = "0.1.0"
