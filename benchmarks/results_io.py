"""Where every benchmark writes its evidence: <name>.json for scripts, <name>.md for people.

Written atomically (edge.durable_files), so an interrupted benchmark leaves the previous results whole
rather than a half-written table that looks like a measurement.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge.durable_files import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, data: dict[str, Any], markdown: str, folder: Path = RESULTS, indent: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{name}.json", (json.dumps(data, indent=indent) + "\n").encode())
    write_atomic(folder / f"{name}.md", (markdown.rstrip("\n") + "\n").encode())
