"""Evaluate: bits-per-byte per source for both checkpoints, on held-out real text."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

# Shared real-text inputs (tokenizer, packs, held-out shard), built once per test process.
from tests.fixtures.training import built_inputs, tiny_model, trained_phase1  # noqa: F401  (built_inputs is a fixture)


@pytest.fixture
def ws(workspace, built_inputs):  # noqa: F811
    import shutil

    root, heldout = built_inputs
    shutil.copytree(root / "data", workspace.path("data"))
    workspace.heldout = heldout
    return workspace


def _tokenizer(ws):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(ws.path("data/pack/tokenizer"))


def test_windows_predict_every_token_after_the_first_once():
    from pipelines.evaluate.bpb import windows

    ids = list(range(10))
    ws_ = windows(ids, 4)
    assert all(len(w) <= 4 for w in ws_)
    predicted = [t for w in ws_ for t in w[1:]]
    assert predicted == ids[1:]
    assert windows([5], 4) == [] and windows(ids, 64) == [ids]


def test_scores_match_a_direct_computation_and_ignore_batch_padding(ws):
    from pipelines.evaluate.bpb import score_documents

    tok = _tokenizer(ws)
    model = tiny_model(vocab=len(tok))
    texts = ws.heldout["news"][:3]
    one = score_documents(model, tok, texts, seq_len=4096, max_tokens_per_doc=100_000, batch_size=1)
    batched = score_documents(model, tok, texts, seq_len=4096, max_tokens_per_doc=100_000, batch_size=3)
    assert batched.nats == pytest.approx(one.nats, rel=1e-5) and batched.tokens == one.tokens
    # direct: each document + EOS in one pass, every token after the first predicted
    nats, tokens = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        nats += float(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
        tokens += ids.shape[1] - 1
    assert one.nats == pytest.approx(nats, rel=1e-5) and one.tokens == tokens
    # short windows see less context, so they score worse, but cover the same tokens
    short = score_documents(model, tok, texts, seq_len=16, max_tokens_per_doc=100_000)
    assert short.tokens == one.tokens and short.bytes == one.bytes
    # truncation keeps fewer bytes and tokens
    cut = score_documents(model, tok, texts, seq_len=4096, max_tokens_per_doc=20)
    assert cut.tokens == 3 * 19 and 0 < cut.bytes < one.bytes


def test_evaluate_writes_bpb_per_source_for_both_phases(ws, tmp_path_factory):
    from pipelines.evaluate.bpb import score_documents
    from pipelines.evaluate.stage import heldout_documents, run
    from pipelines.train.stage import run_anneal

    with pytest.raises(FileNotFoundError, match="models/phase1"):
        run(ws.params())
    params, _ = trained_phase1(ws, tmp_path_factory, steps=60)  # 60 steps, shared with test_train.py
    params["evaluate"].update({"max_docs_per_source": 3, "max_tokens_per_doc": 256})
    params["evaluate"]["lm_eval"].update({"limit": 6})
    params["evaluate"]["contamination"].update({"max_items": 12, "max_tokens": 64})
    ws.set_params(params)
    run_anneal(params)
    summary = run(params)
    result = json.loads(ws.path("metrics/details/eval.json").read_text())
    assert set(result) == {"phase1", "phase2", "delta"}
    sources = {"math", "news", "wikipedia"}
    for phase in ("phase1", "phase2"):
        r = result[phase]
        assert set(r["bpb"]) == sources and r["docs"] == {s: 3 for s in sources}
        assert all(math.isfinite(v) and 0 < v < 20 for v in r["bpb"].values())
        assert r["bpb_mean"] == pytest.approx(sum(r["bpb"].values()) / 3)
        assert all(t <= 3 * 255 for t in r["tokens"].values())  # max_tokens_per_doc applied
    assert result["phase1"]["step"] == 60 and result["phase2"]["step"] == 75  # 60 * 0.2 / 0.8 = 15 anneal steps
    assert result["delta"] == {s: pytest.approx(result["phase2"]["bpb"][s] - result["phase1"]["bpb"][s]) for s in sources}
    assert summary["bpb_mean"]["phase1"] == result["phase1"]["bpb_mean"]

    # Training helped: an untrained model of the same architecture scores worse on every source.
    from pipelines.train.checkpoint import load_model

    tok = _tokenizer(ws)
    trained = load_model(ws.path("models/phase1"))
    torch.manual_seed(params["seed"])
    from transformers import LlamaForCausalLM

    untrained = LlamaForCausalLM._from_config(trained.config, attn_implementation="sdpa")
    docs = heldout_documents(3)
    for source, texts in docs.items():
        base = score_documents(untrained, tok, texts, seq_len=64, max_tokens_per_doc=256).bpb
        assert result["phase1"]["bpb"][source] < base - 0.5, (source, base)

    # lm-eval-harness ran on the local task files, for both phases, within the limit.
    lm = json.loads(ws.path("metrics/details/lm_eval.json").read_text())
    for phase in ("phase1", "phase2"):
        csqa, gsm = lm[phase]["local_commonsenseqa"], lm[phase]["local_gsm8k_answer"]
        assert csqa["n"] == 6 and gsm["n"] == 6
        assert 0 <= csqa["acc"] <= 1 and 0 <= csqa["acc_norm"] <= 1
        assert gsm["perplexity"] > 1 and 0 <= gsm["acc"] <= 1
    assert summary["lm_eval"]["phase1"] == lm["phase1"]

    # The Min-K% audit covers the configured eval sets against the held-out reference.
    audit_ = json.loads(ws.path("metrics/details/contamination.json").read_text())
    assert set(audit_["sets"]) == {"gsm8k", "commonsenseqa"} and audit_["k"] == 0.2
    assert audit_["reference"]["n"] == 9  # 3 held-out docs x 3 sources
    for s in audit_["sets"].values():
        assert s["n"] == 12 and 0 <= s["flagged"] <= 12 and math.isfinite(s["mean"])

    # Re-running evaluate gives the same file (deterministic on CPU).
    before = ws.path("metrics/details/eval.json").read_bytes()
    run(params)
    assert ws.path("metrics/details/eval.json").read_bytes() == before


def test_missing_heldout_is_a_clear_error(workspace):
    from pipelines.evaluate.stage import heldout_documents

    with pytest.raises(FileNotFoundError, match="heldout"):
        heldout_documents(5)


def test_min_k_prob_is_the_mean_of_the_lowest_k_share():
    import numpy as np

    from pipelines.evaluate.contamination import min_k_prob

    lp = np.array([-0.1, -5.0, -0.2, -3.0, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8])
    assert min_k_prob(lp, 0.2) == pytest.approx(-4.0)  # the 2 lowest of 10
    assert min_k_prob(lp, 0.05) == pytest.approx(-5.0)  # at least one token
    assert min_k_prob(lp, 1.0) == pytest.approx(lp.mean())
    assert math.isnan(min_k_prob(np.zeros(0), 0.2))
    with pytest.raises(ValueError, match="k must be"):
        min_k_prob(lp, 0)


def test_min_k_audit_flags_text_the_model_was_trained_on(ws, tmp_path_factory):
    """Documents of the phase-1 pack score higher Min-K% than held-out text; fresh items do not."""
    from tests.fixtures.training import real_documents

    from pipelines.evaluate.contamination import audit
    from pipelines.train.checkpoint import load_model

    trained_phase1(ws, tmp_path_factory, steps=60)
    tok = _tokenizer(ws)
    model = load_model(ws.path("models/phase1"))
    docs = real_documents()
    seen = docs["news"][4:24]  # in the phase-1 pack (build_inputs trains on docs[4:64])
    unseen = docs["news"][-20:]  # never packed
    reference = [t for s in ("news", "wikipedia") for t in ws.heldout[s]]
    result = audit(model, tok, {"seen": seen, "unseen": unseen}, reference, k=0.2, max_tokens=64)
    assert result["sets"]["seen"]["mean"] > result["sets"]["unseen"]["mean"]
    assert result["sets"]["seen"]["mean_minus_reference"] > result["sets"]["unseen"]["mean_minus_reference"]
