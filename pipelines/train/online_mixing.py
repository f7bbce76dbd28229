"""Online domain reweighting for phase 1 (``train.online_mixing: {method: odm}``).

ODM (Albalak et al. 2023, *Efficient Online Data Mixing For Language Model Pre-Training*,
arXiv:2312.02406) treats each domain as an arm of a multi-armed bandit (EXP3): each optimizer
step trains on one domain drawn from the policy, and that step's training loss, importance-weighted
by the probability of the draw, is the domain's reward. Domains the model still finds hard
(high loss) are drawn more; the exploration rate decays as ``sqrt(ln K / (K t))``:

    eps_t   = min(1/K, sqrt(ln K / (K t)))
    pi_t(i) = (1 - K eps_t) * softmax(eps_{t-1} * R)(i) + eps_t
    R_i     = a * R_i + (1 - a) * loss / pi_t(i)     (only the drawn domain; a = ``smoothing``)

A domain here is a source of the phase-1 pack. A packed sequence may hold pieces of several
sources: it belongs to the source with most of its tokens (``pack``'s lineage says which).
Within a domain, sequences are drawn in a seeded permutation per epoch of that domain, like the
default stream. The bandit's state (rewards, step, RNG, positions) is in the checkpoint, so a
resumed run draws exactly what the uninterrupted one would have.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.pack.format import PackedDataset
from pipelines.train.data import Batch, make_batch

METHODS = ("odm",)


def check(cfg: dict | None) -> dict | None:
    """The validated ``train.online_mixing`` section (None: off)."""
    if not cfg:
        return None
    if cfg.get("method") not in METHODS:
        raise ValueError(f"train.online_mixing.method must be one of {METHODS}, got {cfg.get('method')!r}")
    smoothing = float(cfg.get("smoothing", 0.9))
    if not 0 <= smoothing < 1:
        raise ValueError(f"train.online_mixing.smoothing must be in [0, 1), got {smoothing}")
    return {"method": cfg["method"], "smoothing": smoothing}


def sequence_domains(phase_dir: Path, n_seq: int) -> tuple[list[str], np.ndarray]:
    """(domain names, the domain index of every sequence): the source holding most of its tokens."""
    t = pq.read_table(Path(phase_dir) / "lineage.parquet", columns=["seq", "source", "start", "end"])
    tokens = pc.subtract(t["end"], t["start"])
    names = sorted(set(t["source"].to_pylist()))
    code = {n: i for i, n in enumerate(names)}
    seq = t["seq"].to_numpy()
    src = np.array([code[s] for s in t["source"].to_pylist()], dtype=np.int64)
    per = np.zeros((n_seq, len(names)), dtype=np.int64)
    np.add.at(per, (seq, src), tokens.to_numpy())
    return names, per.argmax(axis=1)  # ties: the first name in sorted order


class Exp3:
    """The bandit: ``policy()``, ``draw()`` and ``update(arm, loss)``; its state is a plain dict."""

    def __init__(self, k: int, smoothing: float, seed: int):
        self.k, self.smoothing = k, smoothing
        self.rewards = np.zeros(k)
        self.t = 0  # draws so far
        self.rng = np.random.default_rng([seed, 2312_02406])
        self.last_policy = np.full(k, 1 / k)

    def epsilon(self, t: int) -> float:
        return min(1 / self.k, math.sqrt(math.log(self.k) / (self.k * t))) if self.k > 1 and t > 0 else 1 / self.k

    def policy(self) -> np.ndarray:
        t = self.t + 1
        z = self.epsilon(t - 1) * self.rewards
        soft = np.exp(z - z.max())
        soft /= soft.sum()
        eps = self.epsilon(t)
        return (1 - self.k * eps) * soft + eps

    def draw(self) -> int:
        self.last_policy = self.policy()
        arm = int(self.rng.choice(self.k, p=self.last_policy))
        self.t += 1
        return arm

    def update(self, arm: int, loss: float) -> None:
        a = self.smoothing
        self.rewards[arm] = a * self.rewards[arm] + (1 - a) * loss / self.last_policy[arm]

    def state(self) -> dict:
        return {"rewards": self.rewards.tolist(), "t": self.t, "rng": self.rng.bit_generator.state,
                "last_policy": self.last_policy.tolist()}

    def load(self, state: dict) -> None:
        self.rewards = np.asarray(state["rewards"], dtype=float)
        self.t = int(state["t"])
        self.rng.bit_generator.state = state["rng"]
        self.last_policy = np.asarray(state["last_policy"], dtype=float)


class DomainBatchStream:
    """Micro-batches as :class:`pipelines.train.data.BatchStream` gives them, but every optimizer step's
    ``grad_accum`` micro-batches come from one domain the bandit draws; ``observe(loss)`` after the step."""

    def __init__(self, dataset: PackedDataset, micro_batch: int, grad_accum: int, seed: int, cfg: dict,
                 dense_mask: bool = True, rank: int = 0, world: int = 1, across: bool = False):
        self.dataset, self.micro_batch, self.grad_accum, self.seed = dataset, micro_batch, grad_accum, seed
        self.dense_mask, self.rank, self.world, self.across = dense_mask, rank, world, across
        self.domains, of_seq = sequence_domains(dataset.dir, len(dataset))
        self.pools = [np.flatnonzero(of_seq == d) for d in range(len(self.domains))]
        self.bandit = Exp3(len(self.domains), cfg["smoothing"], seed)
        self.positions = [0] * len(self.domains)  # sequences drawn so far per domain (global order)
        self.position = 0  # sequences drawn in all (the default stream's field; kept for the checkpoint)
        self.arm: int | None = None
        self.left = 0  # micro-batches of this step still to give

    def next(self) -> Batch:
        if self.left == 0:
            self.arm, self.left = self.bandit.draw(), self.grad_accum
        pool = self.pools[self.arm]
        first = self.positions[self.arm] + self.rank * self.micro_batch
        seqs = [self.dataset[int(pool[_order(len(pool), self.seed, self.arm, first + i)])]
                for i in range(self.micro_batch)]
        self.positions[self.arm] += self.world * self.micro_batch
        self.position += self.world * self.micro_batch
        self.left -= 1
        return make_batch(seqs, dense_mask=self.dense_mask, across=self.across)

    def observe(self, loss: float) -> None:
        """The finished step's loss (the same on every rank: it is all-reduced) is the drawn domain's reward."""
        self.bandit.update(self.arm, loss)

    def weights(self) -> dict[str, float]:
        """The policy of the last draw, by domain name."""
        return {d: round(float(p), 6) for d, p in zip(self.domains, self.bandit.last_policy)}

    def state(self) -> dict:
        return {"bandit": self.bandit.state(), "positions": list(self.positions), "domains": self.domains}

    def load(self, state: dict) -> None:
        if state["domains"] != self.domains:
            raise ValueError(f"online mixing: checkpoint domains {state['domains']} != the pack's {self.domains}")
        self.bandit.load(state["bandit"])
        self.positions = list(state["positions"])


def _order(n: int, seed: int, arm: int, position: int) -> int:
    """The ``position``-th draw of a domain of ``n`` sequences: a seeded permutation per epoch."""
    epoch, offset = divmod(position, n)
    return int(_permutation(n, seed, arm, epoch)[offset])


@lru_cache(maxsize=64)
def _permutation(n: int, seed: int, arm: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, arm, epoch]).permutation(n)
