"""pack: MeCo (no-loss URL prefix in phase 1 only, honoured by the trainer) and a local HF tokenizer directory."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipelines.core.shards import read_all
from pipelines.pack.format import PackedDataset
from pipelines.train.data import IGNORE, encode_sequence, make_batch
from tests.fixtures.pack_inputs import SEQ_LEN, check_packed_phase, prepare_pack, run_pack


def _tokenizer(ws):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ws.path("data", "pack", "tokenizer")))


def test_meco_prefixes_phase1_masks_the_prefix_and_the_trainer_ignores_it(workspace):
    params = prepare_pack(workspace, per_source=6, meco=True)
    run_pack(params)
    tok = _tokenizer(workspace)
    pack = json.loads(workspace.path("data", "pack", "pack.json").read_text())
    rows = read_all(workspace.path("data", "mix", "phase1")).to_pandas()
    url_of = dict(zip(rows.id, rows.url))

    d1 = workspace.path("data", "pack", "phase1")
    ds = PackedDataset(d1)
    assert json.loads((d1 / "index.json").read_text())["meco"] is True
    lineage = pq.read_table(d1 / "lineage.parquet").to_pandas()
    assert (lineage.prefix_tokens > 0).all()
    seen_prefix = 0
    masked = np.zeros((len(ds), SEQ_LEN), dtype=bool)
    for r in lineage.itertuples():
        item = ds[r.seq]
        n_no_loss = max(0, min(r.prefix_tokens - r.doc_offset, r.end - r.start))
        masked[r.seq, r.start:r.start + n_no_loss] = True
        if r.doc_offset == 0:  # the document's first piece starts with its prefix
            prefix = tok.decode(item.tokens[r.start:r.start + r.prefix_tokens].tolist())
            host = url_of[r.record_id].split("/")[2]
            assert prefix == f"URL: {host}\n\n"
            seen_prefix += 1
    assert seen_prefix == len(rows)  # every document, every copy
    mask = np.stack([ds[i].loss_mask for i in range(len(ds))])
    assert np.array_equal(mask == 0, masked)
    assert pack["phases"]["phase1"]["no_loss_tokens"] == int(masked.sum()) > 0

    # The trainer: the label predicting a prefix token is ignored; every other label is as without the mask.
    dropped = 0
    for i in range(len(ds)):
        item = ds[i]
        _, labels, _, _ = encode_sequence(item)
        item.loss_mask, mask_i = None, item.loss_mask
        _, plain, _, _ = encode_sequence(item)
        target_masked = np.r_[mask_i[1:] == 0, False]
        assert (labels[target_masked] == IGNORE).all()
        assert np.array_equal(labels[~target_masked], plain[~target_masked])
        dropped += int((plain[target_masked] != IGNORE).sum())
    assert dropped > 0  # prefix tokens would have been targets without the mask
    batch = make_batch([ds[i] for i in range(len(ds))])
    assert batch.n_targets == int((batch.labels != IGNORE).sum())
    assert not (batch.labels.numpy()[:, :-1][np.stack([ds[i].loss_mask for i in range(len(ds))])[:, 1:] == 0]
                != IGNORE).any()
    # Phase 2 is the cool-down: no prefix, no mask, and the pieces decode to the bare documents.
    d2 = workspace.path("data", "pack", "phase2")
    assert not list(d2.glob("loss_mask-*.npy")) and PackedDataset(d2)[0].loss_mask is None
    check_packed_phase(workspace, "phase2", tok)


def test_masked_targets_drop_out_of_the_loss():
    from pipelines.pack.format import PackedSequence

    tokens = np.arange(2, 12, dtype=np.uint16)
    mask = np.ones(10, dtype=np.uint8)
    mask[[0, 1, 2, 6, 7]] = 0  # two documents, each with a prefix
    seq = PackedSequence(tokens=tokens, doc_starts=np.array([0, 6], np.int32), n_real=10, loss_mask=mask)
    _, labels, _, _ = encode_sequence(seq)
    # position t predicts t+1: targets 1, 2 (prefix) ignored, 3..5 kept, 6 crosses a document, 7 prefix, 8..9 kept
    assert labels.tolist() == [IGNORE, IGNORE, 5, 6, 7, IGNORE, IGNORE, 10, 11, IGNORE]


def test_local_hf_tokenizer_directory_is_used_and_gets_a_pad_token(workspace, tmp_path):
    from transformers import PreTrainedTokenizerFast

    params = prepare_pack(workspace, per_source=4)
    texts = read_all(workspace.path("data", "mix", "phase1")).column("text").to_pylist()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>").save_pretrained(str(tmp_path / "hf"))
    params["pack"]["tokenizer_dir"] = str(tmp_path / "hf")
    run_pack(params)
    tok = _tokenizer(workspace)
    pack = json.loads(workspace.path("data", "pack", "pack.json").read_text())
    assert pack["tokenizer_source"] == str(tmp_path / "hf") and pack["tokenizer_sample"]["docs"] == 0
    assert tok.eos_token == "</s>" and tok.pad_token == "<|pad|>" and pack["vocab_size"] == len(tok) == 401
    assert pack["eos_id"] == tok.eos_token_id != pack["pad_id"] == tok.pad_token_id
    check_packed_phase(workspace, "phase1", tok)
