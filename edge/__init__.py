"""medge on-device runtime. Everything here runs on the device; nothing here imports `export`."""

__version__ = "0.1.0"
