"""train.lr / train.batch_tokens: auto (Step Law, pipelines/train/step_law.py)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipelines.train import step_law
from pipelines.train.schedule import lr_at


def params() -> dict:
    return yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


def test_the_formulas_are_the_papers():
    # Li et al. 2025 at 1B non-embedding parameters and 100B tokens: lr ~1.6e-3, batch ~1.1M tokens
    assert step_law.step_law_lr(10**9, 10**11) == pytest.approx(1.79 * 1e9 ** -0.713 * 1e11 ** 0.307)
    assert 1.5e-3 < step_law.step_law_lr(10**9, 10**11) < 1.8e-3
    b = step_law.step_law_batch_tokens(10_000)
    assert b == pytest.approx(0.58 * (10_000 * b) ** 0.571, rel=1e-9)  # B(D) with D = steps x B


def test_auto_resolves_to_numbers_and_the_schedule_uses_them():
    p = params()
    assert step_law.resolve(p) is p  # nothing to resolve: the same params
    p["train"].update(lr="auto", batch_tokens="auto")
    before = copy.deepcopy(p)
    out = step_law.resolve(p)
    assert p == before  # the caller's params are not changed
    tp = out["train"]
    n = step_law.non_embedding_parameters(tp)
    assert 500_000 < n < 2_000_000  # the tiny preset, embeddings left out
    steps = tp["phase1_steps"] + round(tp["phase1_steps"] * tp["anneal_fraction"] / (1 - tp["anneal_fraction"]))
    tokens = steps * tp["micro_batch"] * tp["seq_len"] * tp["grad_accum"]
    assert tp["lr"] == pytest.approx(step_law.step_law_lr(n, tokens), rel=1e-4)
    assert tp["grad_accum"] == max(1, round(step_law.step_law_batch_tokens(steps) / (tp["micro_batch"] * tp["seq_len"])))
    assert lr_at(tp["warmup_steps"] + 1, tp) == pytest.approx(tp["lr"])
    # a number of tokens per step sets the accumulation
    p["train"].update(lr=0.003, batch_tokens=8 * p["train"]["micro_batch"] * p["train"]["seq_len"])
    assert step_law.resolve(p)["train"]["grad_accum"] == 8


def test_auto_below_the_floor_is_refused():
    p = params()
    p["train"].update(lr="auto", min_lr=0.5)
    with pytest.raises(ValueError, match="min_lr"):
        step_law.resolve(p)
    p["train"].update(lr=0.003, min_lr=0.0003, batch_tokens=-5)
    with pytest.raises(ValueError, match="batch_tokens"):
        step_law.resolve(p)


def test_the_experiment_pairs_seeds_and_shows_only_separated_intervals():
    from pipelines.experiments import step_law as experiment

    rows = [{"seed": s, "arm": arm, "lr": lr, "bpb_mean": bpb, "bpb": {"web": bpb}, "train_s": 1.0, "eval_s": 1.0}
            for s, (fixed, auto) in enumerate([(3.0, 2.5), (3.1, 2.6), (2.9, 2.4)], start=1)
            for arm, lr, bpb in (("lr_fixed", 0.003, fixed), ("lr_auto", 0.007, auto))]
    out = experiment.step_law_summary(rows)
    assert out["paired_delta_auto_minus_fixed"]["mean"] == pytest.approx(-0.5)
    assert out["paired_delta_auto_minus_fixed"]["half_width"] == pytest.approx(0.0, abs=1e-9)
    assert out["verdict"] == "shown"
    for r in rows:  # overlapping intervals: not shown, whatever the mean says
        if r["arm"] == "lr_auto":
            r["bpb_mean"] += 0.45
    assert experiment.step_law_summary(rows)["verdict"] == "not shown at this scale"
