"""The difficulty ledger: one record per prompt (attempts, successes, EMA pass rate, tier) and the curriculum
sampler that draws RL prompts from it by tier and capability.

    led = Ledger.read(path)                        # jsonl written by the SFT judge or a previous RL step
    ids = led.sample(n, rng, progress=0.3, cfg=curriculum, capabilities={"arithmetic": .75, "knowledge": .25})
    led.update("arith-17", successes=3, attempts=8, step=12, cfg=curriculum)
    led.write(out_path)                            # the RL step's output: the next step's input

The ledger is a versioned artifact, never hidden state: the judge writes it, the RL step reads it and emits the
updated one, and the RL checkpoint carries it (plain lists/dicts/numbers, so checkpoints load with
weights_only=True).

Tiers (prime-rl's easy/normal/hard pools; Kimi k1.5 tracks success rates per problem):
    unseen    no attempts yet (sampled as medium)
    unsolved  >= unsolved_after attempts, no success ever
    easy      EMA pass rate >= easy_above
    hard      EMA pass rate <  hard_below
    medium    otherwise
The tier mix moves linearly from cfg.start to cfg.end over training (Llama 4: "a training curriculum of increasing
prompt hardness"); a tier with too few prompts hands its share to the others.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from herd.posttrain.config import CurriculumConfig

TIERS = ("easy", "medium", "hard", "unsolved")


@dataclass
class Entry:
    prompt_id: str
    capability: str
    attempts: int = 0
    successes: int = 0
    ema: float | None = None  # EMA of group pass rates (None: never attempted)
    tier: str = "unseen"
    last_step: int = -1
    # judge bookkeeping (SFT ledger rows): score, whether the example was kept, and the judge model digest
    extra: dict[str, Any] = field(default_factory=dict)


def tier_of(e: Entry, cfg: CurriculumConfig) -> str:
    if e.attempts == 0 or e.ema is None:
        return "unseen"
    if e.successes == 0 and e.attempts >= cfg.unsolved_after:
        return "unsolved"
    if e.ema >= cfg.easy_above:
        return "easy"
    if e.ema < cfg.hard_below:
        return "hard"
    return "medium"


def tier_mix(cfg: CurriculumConfig, progress: float) -> dict[str, float]:
    """The tier weights at `progress` in [0, 1] (linear from cfg.start to cfg.end), normalized to sum 1."""
    p = min(max(progress, 0.0), 1.0)
    mix = {t: (1 - p) * cfg.start.get(t, 0.0) + p * cfg.end.get(t, 0.0) for t in TIERS}
    total = sum(mix.values())
    return {t: v / total for t, v in mix.items()}


class Ledger:
    def __init__(self, entries: list[Entry] | None = None) -> None:
        self.entries: dict[str, Entry] = {}
        for e in entries or []:
            self.entries[e.prompt_id] = e

    # ---- updates -----------------------------------------------------------------------------------------
    def add(self, prompt_id: str, capability: str, **extra: Any) -> Entry:
        e = self.entries.get(prompt_id)
        if e is None:
            e = self.entries[prompt_id] = Entry(prompt_id, capability)
        e.extra.update(extra)
        return e

    def update(self, prompt_id: str, successes: int, attempts: int, step: int, cfg: CurriculumConfig) -> Entry:
        """Record one group's outcome: counts add up, the EMA moves toward this group's pass rate."""
        if attempts <= 0 or not 0 <= successes <= attempts:
            raise ValueError(f"update({prompt_id!r}): need 0 <= successes ({successes}) <= attempts ({attempts}) "
                             "and attempts > 0")
        e = self.entries[prompt_id]
        rate = successes / attempts
        e.ema = rate if e.ema is None else (1 - cfg.ema) * e.ema + cfg.ema * rate
        e.attempts += attempts
        e.successes += successes
        e.last_step = step
        e.tier = tier_of(e, cfg)
        return e

    # ---- curriculum --------------------------------------------------------------------------------------
    def tiers(self, cfg: CurriculumConfig) -> dict[str, list[str]]:
        """prompt ids per sampling tier (unseen counts as medium), in a stable order."""
        out: dict[str, list[str]] = {t: [] for t in TIERS}
        for pid in sorted(self.entries):
            t = tier_of(self.entries[pid], cfg)
            out["medium" if t == "unseen" else t].append(pid)
        return out

    def sample(self, n: int, rng: np.random.Generator, *, progress: float, cfg: CurriculumConfig,
               capabilities: dict[str, float] | None = None, curriculum: bool = True,
               step: int | None = None) -> list[str]:
        """`n` distinct prompt ids (fewer only if the ledger is smaller): split over capabilities by their
        shares, then over tiers by the curriculum mix at `progress` (uniform when curriculum is False). With
        `step`, prompts drawn within the last `cfg.cooldown` steps rest while their capability has enough
        others."""
        caps = sorted({e.capability for e in self.entries.values()})
        share = {c: (capabilities or {}).get(c, 0.0) for c in caps}
        if sum(share.values()) <= 0:  # no configured shares for what is present: equal shares
            share = {c: 1.0 for c in caps}
        quota = _apportion(n, share)
        picked: list[str] = []
        for cap in caps:
            members = [e for e in self.entries.values() if e.capability == cap]
            if step is not None and cfg.cooldown:
                fresh = [e for e in members if e.last_step < 0 or step - e.last_step >= cfg.cooldown]
                members = fresh if len(fresh) >= quota[cap] else members
            pool = Ledger(members)
            if not curriculum:
                ids = sorted(pool.entries)
                k = min(quota[cap], len(ids))
                picked += [ids[i] for i in rng.choice(len(ids), size=k, replace=False)]
                continue
            by_tier = pool.tiers(cfg)
            mix = tier_mix(cfg, progress)
            want = _apportion(quota[cap], {t: mix[t] if by_tier[t] else 0.0 for t in TIERS})
            for t in TIERS:  # take what each tier has; a deficit moves to the tiers with prompts left
                k = min(want[t], len(by_tier[t]))
                idx = rng.choice(len(by_tier[t]), size=k, replace=False) if k else []
                chosen = [by_tier[t][i] for i in idx]
                picked += chosen
                by_tier[t] = [p for p in by_tier[t] if p not in set(chosen)]
            short = quota[cap] - sum(1 for p in picked if pool.entries.get(p) is not None)
            rest = [p for t in TIERS for p in by_tier[t]]
            if short > 0 and rest:
                idx = rng.choice(len(rest), size=min(short, len(rest)), replace=False)
                picked += [rest[i] for i in idx]
        return picked

    def summary(self, cfg: CurriculumConfig) -> dict[str, float]:
        """Tier fractions and the mean EMA pass rate of attempted prompts (MLflow metrics)."""
        n = max(len(self.entries), 1)
        counts = {t: 0 for t in ("unseen",) + TIERS}
        for e in self.entries.values():
            counts[tier_of(e, cfg)] += 1
        out = {f"rollout.ledger.{t}": c / n for t, c in counts.items()}
        emas = [e.ema for e in self.entries.values() if e.ema is not None]
        out["rollout.ledger.mean_pass_rate"] = float(np.mean(emas)) if emas else 0.0
        return out

    # ---- state / artifact --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"entries": [asdict(e) for e in self.entries.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = {d["prompt_id"]: Entry(**d) for d in state["entries"]}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for pid in sorted(self.entries):
                f.write(json.dumps(asdict(self.entries[pid]), sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> Ledger:
        led = cls()
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    led.entries[d["prompt_id"]] = Entry(**d)
        return led


def _apportion(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split n into integers proportional to weights (largest remainder; stable tie order by key)."""
    total = sum(weights.values())
    if total <= 0:
        return {k: 0 for k in weights}
    raw = {k: n * w / total for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    left = n - sum(out.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - out[k]), k))[:left]:
        out[k] += 1
    return out


__all__ = ["TIERS", "Entry", "Ledger", "tier_mix", "tier_of"]
