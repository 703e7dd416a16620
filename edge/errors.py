"""Exceptions whose messages an on-site IT person can act on.

Every error the daemon reports names the thing at fault (a file, a config key, a peer) and the cause on
one line; callers print ``str(exc)`` and nothing else, so the message must stand on its own.
"""

from __future__ import annotations


class MedgeError(Exception):
    """Base class: a problem with input, configuration or environment, not a bug in medge."""


class ConfigError(MedgeError):
    """A firmware profile is invalid; nothing is started. Carries every problem found, one line each."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class BundleError(MedgeError):
    """A model bundle is missing, tampered with, unsigned or incompatible."""


class InputError(MedgeError):
    """An input image or file cannot be used (corrupt, unsupported, not an image)."""


class BackendUnavailable(MedgeError):
    """An inference backend (TensorRT, CUDA) is not present on this machine."""


def cause_line(e: BaseException, limit: int = 200) -> str:
    """The line of a library's multi-line message that says what went wrong. OpenVINO starts with a source
    location ("Exception from src/.../core.cpp:132:") and ends with the cause; ONNX Runtime puts the cause
    on its first line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    return (lines[-1] if lines[0].endswith(":") else lines[0])[:limit]


def one_line(e: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` - how an unexpected exception from a library is reported
    inside one of our one-line errors."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:limit]}" if lines else type(e).__name__
