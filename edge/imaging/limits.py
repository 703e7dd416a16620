"""How much one input object may declare before it is decoded (profile ``input_limits``).

A small module of its own: sources and the daemon carry the limits without importing the decoders.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.units import MIB as MB  # the profile's *_mb keys are MiB


@dataclass(frozen=True)
class DecodeLimits:
    """The most one object may declare, decoded (checked by `edge.imaging.dicom_guard`)."""

    max_frame_bytes: int = 64 * MB
    max_object_bytes: int = 2048 * MB

    @classmethod
    def from_mb(cls, frame_mb: float, object_mb: float) -> DecodeLimits:
        return cls(int(frame_mb * MB), int(object_mb * MB))


DEFAULT_LIMITS = DecodeLimits()
