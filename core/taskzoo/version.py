"""The version of taskzoo, in one place (the package, run folders and model cards read it)."""

__version__ = "0.1.0"
