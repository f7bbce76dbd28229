"""The science harness: t-intervals, the shown / not-shown rule, held-out standard errors, the claims it
draws, and branches that are real (tiny) training runs, deterministic given the seed."""
from __future__ import annotations

import math

import pytest

from pipelines.experiments._ci import NOT_SHOWN, SHOWN, Interval, lower_is_shown, t_interval
from tests.fixtures.training import built_inputs, tiny_params  # noqa: F401 (fixture)

T_975_2DOF = 4.302652729911275  # t(0.975) with 2 degrees of freedom, from a t table


def test_t_interval_matches_a_hand_computed_interval():
    iv = t_interval([1.0, 2.0, 4.0])
    mean = 7 / 3
    sd = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)  # n-1 in the denominator
    assert iv.mean == pytest.approx(mean)
    assert iv.half_width == pytest.approx(T_975_2DOF * sd / math.sqrt(3))  # 3.7946...
    assert (iv.low, iv.high) == pytest.approx((mean - iv.half_width, mean + iv.half_width))
    assert iv.n == 3
    assert t_interval([2.0, 2.0, 2.0]).half_width == 0.0
    assert math.isnan(t_interval([2.0]).half_width)
    with pytest.raises(ValueError):
        t_interval([])


def test_shown_only_when_the_intervals_do_not_overlap_in_the_claimed_direction():
    low, high = Interval(1.0, 0.1, 3), Interval(1.5, 0.1, 3)
    assert lower_is_shown(low, high) == SHOWN
    assert lower_is_shown(high, low) == NOT_SHOWN  # the wrong way round
    assert lower_is_shown(Interval(1.0, 0.3, 3), Interval(1.5, 0.3, 3)) == NOT_SHOWN  # 1.3 > 1.2: overlap
    assert lower_is_shown(Interval(1.0, 0.25, 3), Interval(1.5, 0.24, 3)) == SHOWN  # 1.25 < 1.26
    assert lower_is_shown(Interval(1.0, math.nan, 1), high) == NOT_SHOWN  # one seed shows nothing


def test_ratio_standard_error_is_the_delta_method_error_of_bits_per_byte():
    from pipelines.experiments._heldout_error import ratio_standard_error

    # every document at the same nats per byte: the ratio does not move when documents are redrawn
    assert ratio_standard_error([10.0, 20.0, 30.0], [10, 20, 30]) == 0.0
    nats, bytes_ = [10.0, 30.0], [10, 10]  # per-document 1 and 3 nats/byte, equal sizes
    # equal sizes: the ratio is the mean of the per-document ratios, whose SE is sd / sqrt(n)
    expected = math.sqrt(((1 - 2) ** 2 + (3 - 2) ** 2) / 1) / math.sqrt(2) / math.log(2)
    assert ratio_standard_error(nats, bytes_) == pytest.approx(expected)
    assert math.isnan(ratio_standard_error([1.0], [1]))
    # Documents needed for 0.01: the error falls as 1/sqrt(n), so 4x the documents halve it.
    from pipelines.experiments._heldout_error import documents_for

    assert documents_for(0.02, 100) == 400 and documents_for(0.005, 100) == 100  # never fewer than measured
    assert documents_for(math.nan, 100) is None and documents_for(0.02, 1) is None


def _runs(constant: list[float], decay: list[float], anneal_wiki: list[float], decay_wiki: list[float]) -> list[dict]:
    runs = []
    for seed, (c, d, aw, dw) in enumerate(zip(constant, decay, anneal_wiki, decay_wiki), start=1):
        for arm, mean, wiki in (("constant", c, dw), ("decay_phase1", d, dw), ("anneal", d, aw),
                                ("anneal_no_replay", d + 0.01, aw)):
            runs.append({"seed": seed, "arm": arm, "bpb": {"wikipedia": wiki, "math": mean}, "bpb_mean": mean,
                         "decay_fraction": 0.2, "decay_shape": "linear", "constant": arm == "constant",
                         "anneal_data": {"constant": "phase1", "decay_phase1": "phase1"}.get(arm, arm),
                         "phase1_s": 1.0, "train_s": 1.0, "eval_s": 1.0})
    return runs


def test_claims_read_the_verdict_from_the_intervals(workspace):
    from pipelines.experiments._report import markdown, summarize

    params = workspace.params()
    params["mix"]["phase2"]["weights"]["wikipedia"] = 1.5  # upsampled: the report makes a claim for it
    main = {"anneal_fraction": 0.2, "decay_shape": "linear"}
    # decay clearly below constant; wikipedia's anneal gain smaller than its seed spread
    runs = _runs(constant=[3.00, 3.01, 3.02], decay=[2.90, 2.91, 2.92],
                 anneal_wiki=[2.50, 2.70, 2.55], decay_wiki=[2.55, 2.60, 2.62])
    for r in runs:  # the held-out set's own error, per source, as each scored run records it
        r["heldout_error"] = {"math": {"docs": 100, "standard_error": 0.02 if r["seed"] == 2 else 0.015},
                              "wikipedia": {"docs": 10, "standard_error": 0.005}}
    summary = summarize(runs, params, main, 400)
    by_claim = {c["claim"]: c for c in summary["claims"]}
    decay = by_claim["LR decay beats a constant LR (same data, same steps)"]
    assert decay["verdict"] == SHOWN and decay["paired_delta"]["mean"] == pytest.approx(-0.1)
    wiki = next(c for c in summary["claims"] if c["claim"].startswith("phase-2 upsampling improves wikipedia"))
    assert wiki["verdict"] == NOT_SHOWN and "within the seed spread" in wiki["why"]
    replay = by_claim["replaying phase-1 data in the anneal improves mean held-out bpb"]
    # no_replay is 0.01 worse at every seed (paired delta -0.01 +- 0), but the arms' own intervals
    # (+-0.025) overlap: the verdict is the stricter non-overlap rule, not the paired one
    assert replay["paired_delta"]["mean"] == pytest.approx(-0.01) and replay["paired_delta"]["half_width"] < 1e-9
    assert replay["verdict"] == NOT_SHOWN
    assert summary["arms"]["constant"]["mean"]["n"] == 3
    text = markdown(summary, "science.png")
    assert "**shown**" in text and f"**{NOT_SHOWN}**" in text and "science.png" in text
    # Precision: the largest error over the seeds, and the documents that would bring it under 0.01.
    assert "| math | 100 | 0.0200 | no | 400 |" in text and "| wikipedia | 10 | 0.0050 | yes | 10 |" in text
    assert "1 of 2 sources reach a standard error under 0.01 (wikipedia)" in text


def test_a_branch_is_deterministic_given_the_seed_and_the_arms_differ(workspace, built_inputs, tmp_path):
    """Tiny real runs: phase 1 to a checkpoint, then a constant-LR and a decaying branch, twice."""
    import shutil

    import torch

    from pipelines.evaluate.stage import evaluate_checkpoint, heldout_documents
    from pipelines.experiments._branches import Arm, run_arm, train_phase1_checkpoints

    root, _ = built_inputs
    shutil.copytree(root / "data", workspace.path("data"))
    params = tiny_params(workspace, checkpoint_every=0, tensorboard=False, warmup_steps=2)
    pack = workspace.path("data", "pack")
    docs = heldout_documents(0)
    ep = {"max_tokens_per_doc": 256, "batch_size": 8}
    arms = [Arm("constant", "phase1", 0.25, constant=True), Arm("decay", "phase1", 0.25)]

    def scores(where, seed):
        p = {**params, "seed": seed}
        ckpt = train_phase1_checkpoints(p, where, pack, [12])[12]
        out = {}
        for arm in arms:
            model_dir = run_arm(arm, p, 16, where, pack, pack / arm.anneal_data, ckpt)
            out[arm.name] = evaluate_checkpoint(model_dir, docs, ep, torch.device("cpu"))
            assert out[arm.name]["step"] == 16
        return {a: r["bpb"] for a, r in out.items()}

    first = scores(tmp_path / "a", seed=1)
    assert scores(tmp_path / "b", seed=1) == first  # bit-identical: same seed, same numbers
    assert first["constant"] != first["decay"]  # the arms really train differently after the branch
    assert scores(tmp_path / "c", seed=2) != first  # and the seed matters


def test_two_arm_summary_pairs_seeds_and_computes_the_deltas_per_source():
    from pipelines.experiments._two_arms import summarize

    rows = [{"arm": arm, "seed": seed, "bpb_mean": base + seed * 0.1, "bpb": {"x": base + seed * 0.1, "y": base},
             "train_s": 1.0, "eval_s": 0.5}
            for seed in (1, 2, 3) for arm, base in (("a", 3.0), ("b", 2.5))]
    s = summarize(rows, "a", "b")
    assert s["paired_delta"]["mean"] == pytest.approx(-0.5) and s["paired_delta"]["half_width"] == pytest.approx(0)
    assert s["arms"]["b"]["bpb"]["x"]["mean"] == pytest.approx(2.7)
    assert s["paired_delta_by_source"]["y"]["mean"] == pytest.approx(-0.5)
    assert s["verdict"] == "shown" and s["wall_s"] == 9.0  # b's interval lies wholly below a's
    with pytest.raises(ValueError, match="same seeds"):
        summarize(rows[:-1], "a", "b")


def test_merge_ablation_packs_slices_and_merges_weights_by_share(workspace, built_inputs, tmp_path):
    """The slice packs hold exactly the sequences asked for; a merge at share 0 / 1 scores as its base / part."""
    import shutil

    import numpy as np
    import torch

    from pipelines.evaluate.stage import evaluate_checkpoint, heldout_documents
    from pipelines.experiments._branches import Arm, run_arm, train_phase1_checkpoints
    from pipelines.experiments.merge_ablation import agreement, merged_score, slice_packs
    from pipelines.pack.format import PackedDataset

    root, _ = built_inputs
    shutil.copytree(root / "data", workspace.path("data"))
    params = tiny_params(workspace, checkpoint_every=0, tensorboard=False, warmup_steps=2)
    phase1 = PackedDataset(workspace.path("data", "pack", "phase1"))
    parts, mixes, sources = slice_packs(tmp_path, share=0.25)
    assert sources and set(parts) == set(mixes) == set(sources)
    for s in sources:
        part, mix = PackedDataset(parts[s]), PackedDataset(mixes[s])
        assert len(mix) == len(phase1) + round(len(phase1) / 3)  # B plus S at a quarter of the sequences
        assert all(np.array_equal(mix[i].tokens, phase1[i].tokens) for i in range(len(phase1)))
        assert {part[i].tokens.tobytes() for i in range(len(part))} >= {mix[i].tokens.tobytes()
                                                                          for i in range(len(phase1), len(mix))}
    pack = workspace.path("data", "pack")
    ckpt = train_phase1_checkpoints(params, tmp_path / "p1", pack, [12])[12]
    base = run_arm(Arm("decay", "phase1", 0.25), params, 16, tmp_path, pack, pack / "phase1", ckpt)
    docs, ep = heldout_documents(0), {"max_tokens_per_doc": 256, "batch_size": 8}
    cpu = torch.device("cpu")
    assert merged_score(base, ckpt, 0.0, docs, ep)["bpb"] == evaluate_checkpoint(base, docs, ep, cpu)["bpb"]
    assert merged_score(base, ckpt, 1.0, docs, ep)["bpb"] == evaluate_checkpoint(ckpt, docs, ep, cpu)["bpb"]
    half = merged_score(base, ckpt, 0.5, docs, ep)["bpb_mean"]
    assert half not in (evaluate_checkpoint(base, docs, ep, cpu)["bpb_mean"], evaluate_checkpoint(ckpt, docs, ep, cpu)["bpb_mean"])

    fake = {"base": {"bpb_mean": 3.0}, "slices": {
        s: {"real": {"bpb_mean": 2.0 + k, "bpb": {s: 2.0 + k}}, "merged": {"bpb_mean": 2.5 + k, "bpb": {s: 2.4 + k}}}
        for k, s in enumerate(["a", "b", "c"])}}
    a = agreement(fake)
    assert a["spearman_mean_bpb"] == pytest.approx(1.0) and a["mae_mean_bpb"] == pytest.approx(0.5)
    assert a["best_real"] == a["best_merged"] == "a" and a["helps_real"] == {"a": True, "b": False, "c": False}  # b ties the base: no help

    # Over seeds: intervals of each slice's bpb and of the agreement; the reading follows the interval.
    from pipelines.experiments.merge_ablation import markdown, over_seeds

    def seed(k, flip):
        r = {**fake, "seed": k, "seconds": 60.0, "slices": {**fake["slices"]}}
        if flip:  # merged ranks a and c the other way round: Spearman -0.5
            r["slices"]["a"] = {**fake["slices"]["a"], "merged": {"bpb_mean": 4.6, "bpb": {"a": 4.6}}}
        return r

    good = {"steps": 8, "share": 0.3, "seeds": [seed(1, False), seed(2, False), seed(3, False)]}
    o = over_seeds(good)
    assert o["spearman_mean_bpb"]["mean"] == pytest.approx(1.0) and o["best_agrees"] == 3 and o["minutes"] == 3.0
    assert o["slices"]["b"]["merged"]["mean"] == pytest.approx(3.5) and o["slices"]["b"]["merged_own"]["mean"] == pytest.approx(3.4)
    assert "On mean bpb the claim holds at this scale" in markdown(good)
    mixed = {**good, "seeds": [seed(1, False), seed(2, True), seed(3, False)]}
    assert over_seeds(mixed)["best_agrees"] == 2 and "On mean bpb the claim is not shown at this scale" in markdown(mixed)
    assert "no interval over seeds" in markdown({**good, "seeds": good["seeds"][:1]})
