"""labelwatch: online label-quality scoring of multi-label data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labelwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
