"""UIDs of what medge writes into a PACS, derived from the finding (never random).

``2.25.<uuid5 as an integer>`` (PS3.5 B.2: a UUID-derived UID needs no registered root). The SR and SC
SOP Instance UIDs depend on the finding id only, so sending a finding twice (a retry after a lost
C-STORE response, a forwarder restarted without its queue) stores the same instances again: the PACS
overwrites or ignores them, never shows two reports. Series UIDs group what one model wrote into one
study (one SR series and one SC series per study and model version).
"""

from __future__ import annotations

import uuid

# medge's own namespace for uuid5 UIDs (a fixed random UUID; changing it would change every UID)
NAMESPACE = uuid.UUID("5b0c0f4e-8a51-4d6b-9c8f-6f2d3a9e7c11")


def uid(*parts: str) -> str:
    """``2.25.<int(uuid5(NAMESPACE, 'part|part|...'))>``: at most 2 + 1 + 2 + 1 + 39 = 44 characters."""
    return f"2.25.{uuid.uuid5(NAMESPACE, '|'.join(parts)).int}"


def sr_instance_uid(finding_id: str) -> str:
    return uid("sr", finding_id)


def sc_instance_uid(finding_id: str) -> str:
    return uid("sc", finding_id)


def series_uid(kind: str, study_uid: str, model_name: str, model_version: str) -> str:
    """One series per (kind: 'sr' or 'sc', original study, model name and version)."""
    return uid("series", kind, study_uid, model_name, model_version)


def tracking_uid(finding_id: str, group: str) -> str:
    """The TID 1500 tracking identifier of one measurement group (``group``: 'image', 'region-3', ...)."""
    return uid("tracking", finding_id, group)


def device_uid(model_name: str, model_version: str, sha256: str) -> str:
    """The SR observer device: the model file that ran (its SHA-256), not the machine."""
    return uid("device", model_name, model_version, sha256)
