"""Exponential backoff with jitter for reconnects.

A fleet of devices that lost the same hospital link would otherwise all reconnect in the same second
when it comes back; "equal jitter" keeps the exponential growth but spreads the attempts over the
upper half of each interval.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    min_s: float = 1.0
    max_s: float = 120.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling up to ``max_s``."""
        ceiling = min(self.max_s, self.min_s * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
