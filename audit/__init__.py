"""rebasin-audit: a reproducibility audit of model merging with Git Re-Basin."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rebasin-audit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
