"""A mergeable quantile sketch (deterministic compactor hierarchy, Manku-Rajagopalan-Lindsay / KLL style).

Level ``h`` holds values of weight ``2**h``. When a level holds ``k`` values it is
sorted and *compacted*: every other value moves up a level (the offset alternates
per level, so successive errors tend to cancel) and the rest are discarded.

Error bound (rank): a compaction at level ``h`` changes the rank of any query value
by at most ``2**h``. ``error_weight`` sums that over every compaction this sketch
(and each sketch merged into it) performed, so for every value ``x``
``|estimated_rank(x) - true_rank(x)| <= error_weight``, and
``error_weight / n <= levels / k`` (each level sees at most ``n`` total weight, so it
compacts at most ``n / (k 2**h)`` times). With k = 4096 and n = 10**7 the bound is
below 0.3% of the ranks. Merging adds level buffers and compacts, which keeps the bound.
"""
from __future__ import annotations


class QuantileSketch:
    def __init__(self, k: int = 4096):
        if k < 2 or k % 2:
            raise ValueError(f"quantile sketch capacity k must be an even number >= 2, got {k}")
        self.k = k
        self.levels: list[list[float]] = [[]]
        self.offsets: list[int] = [0]
        self.n = 0
        self.error_weight = 0

    def add(self, value: float) -> None:
        self.levels[0].append(float(value))
        self.n += 1
        if len(self.levels[0]) >= self.k:
            self._compact_from(0)

    def extend(self, values) -> None:
        for v in values:
            self.add(v)

    def _compact_from(self, h: int) -> None:
        while h < len(self.levels) and len(self.levels[h]) >= self.k:
            buf = sorted(self.levels[h])
            if len(buf) % 2:  # an odd item out stays at this level, unweighted change: none
                keep_here, buf = [buf[-1]], buf[:-1]
            else:
                keep_here = []
            if h + 1 == len(self.levels):
                self.levels.append([])
                self.offsets.append(0)
            self.levels[h + 1].extend(buf[self.offsets[h]::2])
            self.offsets[h] ^= 1
            self.levels[h] = keep_here
            self.error_weight += 2 ** h
            h += 1

    def merge(self, other: "QuantileSketch") -> "QuantileSketch":
        if other.k != self.k:
            raise ValueError("can only merge quantile sketches of the same k")
        while len(self.levels) < len(other.levels):
            self.levels.append([])
            self.offsets.append(0)
        for h, buf in enumerate(other.levels):
            self.levels[h].extend(buf)
        self.n += other.n
        self.error_weight += other.error_weight
        for h in range(len(self.levels)):
            self._compact_from(h)
        return self

    def _weighted(self) -> list[tuple[float, int]]:
        return sorted((v, 2 ** h) for h, buf in enumerate(self.levels) for v in buf)

    def quantile(self, q: float) -> float:
        """The smallest stored value whose estimated rank (weight of values <= it) reaches q * n."""
        if self.n == 0:
            raise ValueError("quantile of an empty sketch")
        q = min(max(float(q), 0.0), 1.0)
        target, cum = q * self.n, 0
        items = self._weighted()
        for v, w in items:
            cum += w
            if cum >= target:
                return v
        return items[-1][0]

    def rank_error_bound(self) -> float:
        """Worst-case |estimated - true| rank as a fraction of n (0 while nothing was compacted)."""
        return self.error_weight / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {"k": self.k, "n": self.n, "error_weight": self.error_weight, "levels": self.levels, "offsets": self.offsets}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantileSketch":
        s = cls(d["k"])
        s.n, s.error_weight = d["n"], d["error_weight"]
        s.levels, s.offsets = [list(b) for b in d["levels"]], list(d["offsets"])
        return s
