"""Trainer: WSD schedule, batches (padding, per-document positions and mask), learning, anneal hand-off, exact resume.

Inputs are built from real text (wikitext-2, news, gsm8k) by tests/fixtures/training.py: a tiny
byte-level BPE tokenizer and packed sequences in the pack format, as the pack stage would.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.pack.format import PackedSequence
from tests.fixtures.training import built_inputs, read_curve, tiny_model, tiny_params, trained_phase1  # noqa: F401 (fixture)


@pytest.fixture
def ws(workspace, built_inputs):
    import shutil

    root, _ = built_inputs
    shutil.copytree(root / "data", workspace.path("data"))
    return workspace


def token_nll(model, batch) -> torch.Tensor:
    """Per-position NLL of a Batch (0 where there is no target)."""
    from pipelines.train.data import IGNORE

    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits
    return F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE,
                           reduction="none").view(batch.labels.shape)


# ---------------------------------------------------------------- schedule

def test_wsd_schedule_shape():
    from pipelines.train.schedule import anneal_steps, wsd_lr

    assert anneal_steps(300, 0.2) == 75 and anneal_steps(100, 0.0) == 0
    n1, warm, lr, floor = 100, 10, 3e-3, 3e-4
    n2 = anneal_steps(n1, 0.2)
    for shape in ("linear", "cosine", "1-sqrt"):
        lrs = [wsd_lr(s, lr=lr, min_lr=floor, warmup_steps=warm, phase1_steps=n1, decay_steps=n2, decay_shape=shape)
               for s in range(n1 + n2)]
        warmup, stable, decay = lrs[:warm], lrs[warm:n1], lrs[n1:]
        assert all(a < b for a, b in zip(warmup, warmup[1:])) and 0 < warmup[0] < lr and warmup[-1] == lr
        assert stable == [lr] * (n1 - warm)
        assert all(a > b for a, b in zip(decay, decay[1:])) and decay[0] < lr
        assert decay[-1] == pytest.approx(floor)
    # 1-sqrt drops faster early in the anneal than linear
    kw = dict(lr=lr, min_lr=floor, warmup_steps=warm, phase1_steps=n1, decay_steps=n2)
    assert wsd_lr(n1 + 5, decay_shape="1-sqrt", **kw) < wsd_lr(n1 + 5, decay_shape="linear", **kw)
    # cosine stays above linear in the first half and below it in the second, meeting it halfway
    assert wsd_lr(n1 + 5, decay_shape="cosine", **kw) > wsd_lr(n1 + 5, decay_shape="linear", **kw)
    assert wsd_lr(n1 + n2 - 5, decay_shape="cosine", **kw) < wsd_lr(n1 + n2 - 5, decay_shape="linear", **kw)
    even = {**kw, "decay_steps": 20}  # progress (step - n1 + 1) / 20 = 0.5 at step n1 + 9
    assert wsd_lr(n1 + 9, decay_shape="cosine", **even) == pytest.approx(wsd_lr(n1 + 9, decay_shape="linear", **even))
    with pytest.raises(ValueError, match="decay_shape"):
        wsd_lr(0, decay_shape="exponential", **kw)
    with pytest.raises(ValueError, match="anneal_fraction"):
        anneal_steps(100, 1.0)


# ---------------------------------------------------------------- batches

def _packed(tokens: list[int], starts: list[int], n_real: int) -> PackedSequence:
    return PackedSequence(tokens=np.array(tokens, dtype=np.uint16), doc_starts=np.array(starts, dtype=np.int32),
                          n_real=n_real)


def test_positions_reset_at_doc_starts_and_padding_and_boundaries_are_not_targets():
    from pipelines.train.data import IGNORE, make_batch

    toks = [10, 11, 12, 13, 0, 20, 21, 0, 30, 31, 32, 1, 1, 1, 1, 1]  # 3 docs (0 = eos), then padding (1)
    b = make_batch([_packed(toks, [0, 5, 8], n_real=11)])
    assert b.position_ids[0].tolist()[:11] == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2]
    labels = b.labels[0].tolist()
    # t predicts t+1 inside a document; never across a document start, never a padding token
    assert labels[:11] == [11, 12, 13, 0, IGNORE, 21, 0, IGNORE, 31, 32, IGNORE]
    assert set(labels[11:]) == {IGNORE}
    assert b.n_targets == 8 and b.n_tokens == 11
    mask = b.attention_mask[0, 0]
    assert mask[6, 5] and mask[6, 6] and not mask[6, 7]  # causal within the document
    assert not mask[6, 4] and not mask[9, 2]  # no attention into a previous document
    assert not mask[10, 12]  # real tokens never see padding


def test_across_documents_one_segment_attends_back_and_predicts_every_next_token():
    """document_attention: across (what In-Context Pretraining needs): the documents of a sequence are context
    for the ones after them; padding stays out, and the loss equals the same tokens as one plain document."""
    from pipelines.train.data import IGNORE, make_batch

    toks = [10, 11, 12, 13, 0, 20, 21, 0, 30, 31, 32, 1, 1, 1, 1, 1]
    b = make_batch([_packed(toks, [0, 5, 8], n_real=11)], across=True)
    assert b.position_ids[0].tolist()[:11] == list(range(11))
    assert b.labels[0].tolist()[:11] == toks[1:11] + [IGNORE] and set(b.labels[0].tolist()[11:]) == {IGNORE}
    mask = b.attention_mask[0, 0]
    assert mask[6, 4] and mask[9, 2] and not mask[6, 7] and not mask[10, 12]
    model = tiny_model()
    one_doc = make_batch([_packed(toks, [0], n_real=11)])
    assert torch.equal(token_nll(model, b), token_nll(model, one_doc))
    assert not torch.equal(token_nll(model, b), token_nll(model, make_batch([_packed(toks, [0, 5, 8], n_real=11)])))


def test_padding_does_not_change_the_loss():
    from pipelines.train.data import make_batch

    model = tiny_model()
    real = [5, 80, 81, 82, 0, 90, 91, 92, 93]
    padded = make_batch([_packed(real + [1] * 7, [0, 5], n_real=9)])
    garbage = make_batch([_packed(real + [300, 301, 302, 303, 304, 305, 306], [0, 5], n_real=9)])
    assert torch.equal(padded.labels, garbage.labels)
    assert torch.allclose(token_nll(model, padded).sum(), token_nll(model, garbage).sum(), atol=1e-6)


def test_packed_loss_equals_sum_of_per_document_losses():
    from pipelines.train.data import make_batch

    model = tiny_model()
    docs = [[7, 40, 41, 42, 43, 0], [8, 50, 51, 0], [9, 60, 61, 62, 63, 64, 0]]
    flat = [t for d in docs for t in d]
    starts = [0, 6, 10]
    packed = token_nll(model, make_batch([_packed(flat + [1] * 4, starts, n_real=len(flat))])).sum()
    alone = sum(token_nll(model, make_batch([_packed(d, [0], n_real=len(d))])).sum() for d in docs)
    assert torch.allclose(packed, alone, atol=1e-4), (packed, alone)
    # without the per-document mask and positions the loss would differ: the test can fail
    nomask = make_batch([_packed(flat + [1] * 4, [0], n_real=len(flat))])
    assert not torch.allclose(token_nll(model, nomask)[0, 6:9].sum(), token_nll(model, make_batch(
        [_packed(docs[1], [0], n_real=4)]))[0, :3].sum(), atol=1e-4)


def test_sequence_order_is_a_seeded_permutation_per_epoch():
    from pipelines.train.data import sequence_order

    first = [sequence_order(10, 3, i) for i in range(10)]
    second = [sequence_order(10, 3, i) for i in range(10, 20)]
    assert sorted(first) == list(range(10)) == sorted(second) and first != second
    assert first == [sequence_order(10, 3, i) for i in range(10)]
    assert first != [sequence_order(10, 4, i) for i in range(10)]


def test_presets_build_with_tokenizer_vocab():
    from pipelines.train.model import PRESETS, build_config

    for name in PRESETS:
        cfg = build_config(name, 4096, eos_id=0, pad_id=1)
        assert cfg.vocab_size == 4096 and cfg.hidden_size % cfg.num_attention_heads == 0
    with pytest.raises(ValueError, match="preset"):
        build_config("huge", 4096, eos_id=0, pad_id=1)


# ---------------------------------------------------------------- training runs

def test_loss_decreases_on_real_text_and_metrics_are_written(ws, tmp_path_factory):
    _, result = trained_phase1(ws, tmp_path_factory, steps=60)  # the run test_evaluate.py evaluates
    curve = read_curve(ws.path("metrics/train_phase1.csv"))
    assert [r["step"] for r in curve] == list(range(1, 61))
    first, last = np.mean([r["loss"] for r in curve[:5]]), np.mean([r["loss"] for r in curve[-5:]])
    assert last < first - 0.5, (first, last)
    assert curve[0]["tokens"] == 4 * 64 and curve[-1]["tokens"] == result["tokens"]  # phase1 rows are full
    m = json.loads(ws.path("metrics/details/train_phase1.json").read_text())
    assert m["steps"] == 60 and m["lr_final"] == 0.003 and m["loss_final"] == curve[-1]["loss"]
    assert m["tokens_per_s"] > 0
    for f in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt"):
        assert ws.path("models/phase1", f).exists()


def test_anneal_starts_from_phase1_checkpoint_and_decays(ws):
    from safetensors.torch import load_file

    from pipelines.train.loop import train_phase
    from pipelines.train.stage import run_anneal, run_phase1

    params = tiny_params(ws, phase1_steps=20, checkpoint_every=10, anneal_fraction=0.2)
    with pytest.raises(RuntimeError, match="phase-1"):
        run_anneal(params)  # nothing to anneal from yet
    run_phase1(params)
    train_phase(params, "phase2", stop_after=0)  # step 0 of the anneal, checkpointed
    w1 = load_file(ws.path("models/phase1/model.safetensors"))
    w2 = load_file(ws.path("models/phase2/model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    s1 = torch.load(ws.path("models/phase1/trainer_state.pt"), weights_only=True)
    s2 = torch.load(ws.path("models/phase2/trainer_state.pt"), weights_only=True)
    assert s2["step"] == s1["step"] == 20
    assert torch.equal(s1["optimizer"]["state"][0]["exp_avg"], s2["optimizer"]["state"][0]["exp_avg"])

    result = run_anneal(params)
    curve = read_curve(ws.path("metrics/train_phase2.csv"))
    assert [r["step"] for r in curve] == [21, 22, 23, 24, 25]  # 20 * 0.2 / 0.8 = 5 anneal steps
    lrs = [r["lr"] for r in curve]
    assert lrs[0] < 0.003 and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(0.0003)
    assert result["steps"] == 5 and result["step_final"] == 25
    assert curve[0]["tokens"] > s1["tokens"]  # the token count continues from phase 1
    w3 = load_file(ws.path("models/phase2/model.safetensors"))
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_interrupted_run_resumes_exactly(ws):
    from safetensors.torch import load_file

    from pipelines.train.loop import train_phase
    from pipelines.train.stage import run_phase1

    params = tiny_params(ws, phase1_steps=16, checkpoint_every=6)
    run_phase1(params)
    straight = ws.path("metrics/train_phase1.csv").read_text()
    straight_w = load_file(ws.path("models/phase1/model.safetensors"))

    import shutil

    shutil.rmtree(ws.path("models"))
    shutil.rmtree(ws.path("metrics"))
    assert train_phase(params, "phase1", stop_after=9)["step"] == 9  # "killed" after step 9 (not a checkpoint step)
    assert torch.load(ws.path("models/phase1/trainer_state.pt"), weights_only=True)["step"] == 9
    assert not ws.path("metrics/train_phase1.csv").exists()
    run_phase1(params)
    assert ws.path("metrics/train_phase1.csv").read_text() == straight  # identical loss curve
    resumed_w = load_file(ws.path("models/phase1/model.safetensors"))
    assert all(torch.equal(straight_w[k], resumed_w[k]) for k in straight_w)

    # A finished, matching checkpoint is reused; a params change that alters the run starts over.
    assert run_phase1(params)["loss_final"] == read_curve(ws.path("metrics/train_phase1.csv"))[-1]["loss"]
    changed = tiny_params(ws, phase1_steps=16, checkpoint_every=6, lr=0.001)
    run_phase1(changed)
    assert ws.path("metrics/train_phase1.csv").read_text() != straight
    assert not list(ws.path("models").glob(".tmp-*"))  # no temp dirs left behind


def test_on_step_sees_every_step_once_as_the_curve_records_it(ws):
    from pipelines.train.loop import train_phase

    params = tiny_params(ws, phase1_steps=6, checkpoint_every=0)
    seen = []
    assert train_phase(params, "phase1", stop_after=2, on_step=seen.append)["step"] == 2
    train_phase(params, "phase1", on_step=seen.append)  # resumed: steps 3..6
    curve = read_curve(ws.path("metrics/train_phase1.csv"))
    assert [s.step for s in seen] == [r["step"] for r in curve] == [1, 2, 3, 4, 5, 6]
    assert [s.loss for s in seen] == [r["loss"] for r in curve] and [s.lr for s in seen] == [r["lr"] for r in curve]
    assert all(s.seconds > 0 and s.tokens > 0 and s.grad_norm > 0 for s in seen)


def test_seq_len_mismatch_is_a_clear_error(ws):
    from pipelines.train.stage import run_phase1

    with pytest.raises(ValueError, match="seq_len"):
        run_phase1(tiny_params(ws, seq_len=128))


def test_tensorboard_events_and_anneal_checkpoint_averaging(ws):
    import shutil

    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipelines.train.loop import train_phase
    from pipelines.train.stage import run_anneal, run_phase1

    params = tiny_params(ws, phase1_steps=12, checkpoint_every=2, anneal_fraction=0.25)  # 4 anneal steps
    run_phase1(params)
    events = EventAccumulator(str(ws.path("models/tb_phase1"))).Reload()
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
    curve = read_curve(ws.path("metrics/train_phase1.csv"))
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in curve], rel=1e-5)

    # Plain anneal, stopped at step 14 to read those weights, then resumed to 16.
    train_phase(params, "phase2", stop_after=2)
    w14 = load_file(ws.path("models/phase2/model.safetensors"))
    run_anneal(params)
    w16 = load_file(ws.path("models/phase2/model.safetensors"))
    # Averaging the last 2 checkpoints (steps 14 and 16) gives their mean.
    shutil.rmtree(ws.path("models/phase2"))
    params["train"]["average_last"] = 2
    ws.set_params(params)
    run_anneal(params)
    avg = load_file(ws.path("models/phase2/model.safetensors"))
    assert not torch.equal(w14["model.norm.weight"], w16["model.norm.weight"])
    for k in w16:
        torch.testing.assert_close(avg[k], (w14[k] + w16[k]) / 2, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- online domain reweighting (ODM)

def test_exp3_draws_the_hard_domain_more_and_keeps_exploring():
    from pipelines.train.online_mixing import Exp3

    bandit, draws = Exp3(3, smoothing=0.9, seed=1), []
    for _ in range(400):
        arm = bandit.draw()
        draws.append(arm)
        assert abs(bandit.last_policy.sum() - 1) < 1e-9 and bandit.last_policy.min() >= bandit.epsilon(bandit.t) - 1e-12
        bandit.update(arm, [1.0, 1.0, 3.0][arm])  # domain 2 stays three times as hard
    # the hard domain's weight ends highest (mildly: the reward is a moving average and eps_t shrinks)
    assert bandit.last_policy[2] > max(bandit.last_policy[:2]) + 0.02
    replay = Exp3(3, smoothing=0.9, seed=1)
    replayed = []
    for _ in range(50):
        arm = replay.draw()
        replayed.append(arm)
        replay.update(arm, [1.0, 1.0, 3.0][arm])
    assert replayed == draws[:50]  # seeded


def test_online_mixing_trains_one_domain_per_step_and_resumes_exactly(ws):
    from safetensors.torch import load_file

    from pipelines.train.loop import train_phase
    from pipelines.train.online_mixing import sequence_domains
    from pipelines.train.stage import run_phase1

    names, of_seq = sequence_domains(ws.path("data/pack/phase1"), int(json.loads(
        ws.path("data/pack/phase1/index.json").read_text())["n_seq"]))
    assert names == ["math", "news", "wikipedia"] and set(of_seq.tolist()) == {0, 1, 2}
    params = tiny_params(ws, phase1_steps=16, checkpoint_every=6, online_mixing={"method": "odm"})
    result = run_phase1(params)
    mixing = json.loads(ws.path("metrics/details/train_phase1.json").read_text())["online_mixing"]
    assert sum(mixing["steps_per_domain"].values()) == 16 and abs(sum(mixing["policy_final"].values()) - 1) < 1e-5
    straight = ws.path("metrics/train_phase1.csv").read_text()
    straight_w = load_file(ws.path("models/phase1/model.safetensors"))
    import shutil

    shutil.rmtree(ws.path("models"))
    shutil.rmtree(ws.path("metrics"))
    assert train_phase(params, "phase1", stop_after=9)["step"] == 9
    run_phase1(params)
    assert ws.path("metrics/train_phase1.csv").read_text() == straight  # the bandit resumed where it stopped
    assert all(torch.equal(straight_w[k], load_file(ws.path("models/phase1/model.safetensors"))[k]) for k in straight_w)
    plain = tiny_params(ws, phase1_steps=16, checkpoint_every=6, online_mixing=None)
    shutil.rmtree(ws.path("models"))
    assert run_phase1(plain)["loss_final"] != result["loss_final"]  # the option changes what is trained on
    with pytest.raises(ValueError, match="online_mixing.method"):
        train_phase(tiny_params(ws, phase1_steps=16, online_mixing={"method": "doremi"}), "phase1")
