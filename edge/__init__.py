"""medge on-device runtime. Everything here runs on the device; nothing here imports `export`."""

from importlib.metadata import PackageNotFoundError, version

try:  # one source of truth: pyproject.toml's version, as installed
    __version__ = version("medge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
