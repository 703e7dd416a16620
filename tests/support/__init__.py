"""What the tests share: real brokers, bundles, DICOM files, daemon processes, mutations."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: tests run from here, subprocesses start here
