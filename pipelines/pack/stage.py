"""pack: ``data/mix/{phase1,phase2}`` -> ``data/pack/`` token shards for the trainer.

1. Train a byte-level BPE on a deterministic phase-1 sample (unique documents in
   id order, up to ``tokenizer_sample_chars``), or take the local Hugging Face
   tokenizer in ``tokenizer_dir``, and save it under ``data/pack/tokenizer/``
   (``AutoTokenizer.from_pretrained`` loads it offline).
2. Per phase: tokenize every document, one task per input shard (``documents.py``; with
   ``meco``, phase 1 only, after a no-loss ``URL: <domain>`` prefix) + EOS; pack the lengths
   into ``seq_len`` sequences (``best_fit``: best-fit-decreasing, documents cut only when
   longer than ``seq_len``; ``concat``: concatenate-and-split; phase 1 with ``order: related``: In-Context
   Pretraining's order first, related documents adjacent, ``related.py``), shuffle the sequences with a
   seeded permutation and write them, one task per token shard, in the format of
   ``pipelines/pack/format.py`` plus ``lineage.parquet`` (``sequences.py``).
3. ``data/pack/pack.json``: what was packed (fill, padding, splits, token shares per source)
   and the tokenizer's ids. Every file is listed with its hash in the manifests.

Stats: ``data/pack/_stats.parquet`` has a row per input shard of each blend (documents in =
documents packed, tokens); ``<phase>/_stats.parquet`` a row per token shard (sequences).
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipelines.config import resolve
from pipelines.core.atomic import write_json_atomic
from pipelines.core.contract import DataStage, ShardResult, ShardTask
from pipelines.core.hashing import sha256_file
from pipelines.core.stats import ShardStats
from pipelines.core.store import fetch_uri
from pipelines.pack.config import pack_config
from pipelines.mix.report import blend_rows
from pipelines.pack.documents import audit_sample, check_one_text_per_id, encode_shard, tokenizer_sample, tokens_rel
from pipelines.pack.format import INDEX, token_dtype
from pipelines.pack.related import adjacent_similarity
from pipelines.pack.mixture_audit import audit, auditable, byte_shares, infer_shares
from pipelines.pack.sequences import (
    Rows, lineage_table, phase_summary, place, shard_contexts, shuffled_sequences, write_token_shard,
)
from pipelines.pack.tokenizer import import_tokenizer, save_tokenizer, special_ids, train_tokenizer

log = logging.getLogger(__name__)
PHASES = ("phase1", "phase2")
TOKENIZER_DIR = "tokenizer"
LINEAGE = "lineage.parquet"
SUMMARY = "pack.json"


class PackStage(DataStage):
    name = "pack"
    input = "mix"
    datasets = PHASES

    def config(self, params: dict) -> dict:
        return pack_config(params)

    def external_inputs(self, run) -> dict[str, str]:
        if not run.cfg["tokenizer_dir"]:
            return {}
        src = resolve(run.cfg["tokenizer_dir"], allow_outside=True)
        if not (src / "tokenizer.json").is_file():
            raise FileNotFoundError(f"params pack.tokenizer_dir={src}: no tokenizer.json (a fast tokenizer is needed)")
        return {f"tokenizer/{p.name}": sha256_file(p) for p in sorted(src.iterdir()) if p.is_file()}

    def plan(self, run) -> list[ShardTask]:
        for phase in PHASES:  # the stage key covers both blends' shards
            run.input_shards(phase)
        return []  # token shards follow from the packing: see prepare

    def input_fingerprints(self, run) -> dict[str, str]:
        return {f"{phase}/{ref.name}": ref.fingerprint for phase in PHASES for ref in run.input_shards(phase)}

    def prepare(self, run, tasks: list[ShardTask]) -> list[ShardTask]:
        cfg = run.cfg
        everything = {**self.input_fingerprints(run), **self.external_inputs(run)}
        tok_dir = run.out_dir / TOKENIZER_DIR
        sample: list[str] = []
        sample_sources: list[str] = []
        if cfg["tokenizer_dir"]:
            import_tokenizer(resolve(cfg["tokenizer_dir"], allow_outside=True), tok_dir)
        else:
            if not run.input_shards("phase1"):
                raise ValueError("pack: data/mix/phase1 is empty: nothing to train the tokenizer on")
            sample, sample_sources = tokenizer_sample(run, run.input_shards("phase1"), cfg["sample_chars"])
            if not sample:
                raise ValueError("pack: data/mix/phase1 is empty: nothing to train the tokenizer on")
            save_tokenizer(train_tokenizer(iter(sample), cfg["vocab_size"]), tok_dir)
        for p in sorted(tok_dir.iterdir()):
            run.add_artifact(f"{TOKENIZER_DIR}/{p.name}")
        eos_id, pad_id, vocab_size = special_ids(tok_dir)  # pack with exactly what was saved
        if eos_id == pad_id:
            raise ValueError("pack: the tokenizer's eos and pad ids coincide")
        tokenizer = {"uri": run.artifact_uri(f"{TOKENIZER_DIR}/tokenizer.json"),
                     "sha256": run.artifacts[f"{TOKENIZER_DIR}/tokenizer.json"]["sha256"]}
        dtype = token_dtype(vocab_size)
        mixture = mixture_audit(run, tok_dir / "tokenizer.json", sample, sample_sources) \
            if cfg["mixture_audit"]["enabled"] else None
        run.notes.update(eos_id=eos_id, pad_id=pad_id, vocab_size=vocab_size, sample=sample, phases={}, stats=[],
                         mixture_audit=mixture)

        tasks = []
        for number, phase in enumerate(PHASES, start=1):
            meco = cfg["meco"] and phase == "phase1"  # phase 2 (the cool-down) packs without the prefix
            refs = run.input_shards(phase)
            # In-Context Pretraining (pack.order: related) orders phase 1 only; phase 2 (the anneal) keeps its order
            order = cfg["order"] if phase == "phase1" else "input"
            extra = (True,) if order == "related" else ()  # the default's jobs are exactly as before
            parts = run.map(encode_shard, [(ref.uri, phase, s, tokenizer, eos_id, cfg["batch_docs"], meco, run.scratch,
                                            *extra) for s, ref in enumerate(refs)])
            check_one_text_per_id(parts)
            rows = Rows(parts)
            placement = place(rows, cfg["seq_len"], cfg["packing"], order)
            seq = shuffled_sequences(placement, cfg["shuffle_seed"], number)
            meco = meco and bool(rows.prefix_length.any())
            files = [run.scratch.uri(tokens_rel(phase, s)) for s in range(len(refs))]
            for k, ctx in enumerate(shard_contexts(rows, placement, seq, cfg["max_seq"], meco, files)):
                ctx.update(dtype=dtype.name, pad_id=pad_id)
                tasks.append(ShardTask(self.name, f"tokens-{k:05d}", [], everything, ctx, dataset=phase))
            summary = phase_summary(rows, placement, cfg["seq_len"], meco)
            if order == "related":
                summary["order"] = {"order": "related", "adjacent_similarity": adjacent_similarity(rows.signature, placement)}
            run.notes["phases"][phase] = {"summary": summary, "meco": meco,
                                          "lineage": lineage_table(rows, placement, seq)}
            for ref, part in zip(refs, parts):
                st = ShardStats(shard=f"{phase}/{ref.name}", records_in=len(part["ids"]),
                                records_out=len(part["ids"]), bytes_in=part["chars"])
                st.extra = {"tokens": float(part["length"].sum())}
                run.notes["stats"].append(st)
            log.info("pack %s: %d sequences, fill %.4f", phase, summary["n_seq"], summary["fill_ratio"])
        run.extra_stats = run.notes["stats"]
        return tasks

    def process(self, task: ShardTask) -> ShardResult:
        c = task.context
        k = int(task.shard.rsplit("-", 1)[1])
        with tempfile.TemporaryDirectory(prefix="pack-") as tmp:
            names = write_token_shard(c, k, task.params["seq_len"], np.dtype(c["dtype"]), c["pad_id"], Path(tmp),
                                      fetch_uri)
            files = {name: Path(tmp, name).read_bytes() for key, name in names.items() if key != "n_seq"}
        stats = ShardStats(shard=task.shard, records_in=c["n_seq"], records_out=c["n_seq"])
        stats.extra = {"tokens": float(c["length"].sum()), "pieces": float(len(c["length"]))}
        return ShardResult(None, None, stats, files=files)

    def finish(self, run, fragments: dict[str, list[dict]]) -> dict:
        cfg, notes = run.cfg, run.notes
        vocab_size = notes["vocab_size"]
        for phase in PHASES:
            info = notes["phases"][phase]
            shards = []
            for f in fragments[phase]:
                names = {key: f"{key}-{f['shard'].rsplit('-', 1)[1]}.npy" for key in ("tokens", "doc_starts", "doc_index", "loss_mask")}
                entry = {key: name for key, name in names.items() if name in f["files"]}
                entry["n_seq"] = int(f["stats"]["records_out"])
                uris = {key: f["files"][name]["uri"] for key, name in entry.items() if key != "n_seq" and "uri" in f["files"][name]}
                shards.append({**entry, **({"uris": uris} if uris else {})})
            summary = info["summary"]
            run.write_artifact(f"{phase}/{LINEAGE}", lambda tmp, t=info["lineage"]: pq.write_table(t, tmp, compression="zstd"))
            run.write_artifact(f"{phase}/{INDEX}", lambda tmp, s=shards, m=info["meco"], su=summary: write_json_atomic(tmp, {
                "seq_len": cfg["seq_len"], "dtype": token_dtype(vocab_size).name, "vocab_size": vocab_size,
                "eos_id": notes["eos_id"], "pad_id": notes["pad_id"], "n_seq": su["n_seq"], "tokens": su["tokens"],
                "padding": su["padding"], "shards": s, "packing": cfg["packing"], "lineage": LINEAGE, "meco": m,
            }))
        sample = notes["sample"]
        summary = {
            "packing": cfg["packing"], "seq_len": cfg["seq_len"],
            "vocab_size": vocab_size, "vocab_size_requested": cfg["vocab_size"], "eos_id": notes["eos_id"],
            "pad_id": notes["pad_id"], "dtype": token_dtype(vocab_size).name, "tokenizer": TOKENIZER_DIR,
            "meco": cfg["meco"], "tokenizer_source": cfg["tokenizer_dir"] or "trained",
            "tokenizer_sample": {"docs": len(sample), "chars": sum(len(t) for t in sample)},
            "phases": {p: notes["phases"][p]["summary"] for p in PHASES},
        }
        if cfg["order"] != "input":  # only then: the default's pack.json is byte for byte as before
            summary["order"] = cfg["order"]
        if notes["mixture_audit"] is not None:
            summary["mixture_audit"] = notes["mixture_audit"]
        run.write_artifact(SUMMARY, lambda tmp: write_json_atomic(tmp, summary))
        return {}

    def headline(self, out_dir) -> dict:
        """Records in and out, and the tokens both phases hold."""
        phases = json.loads((out_dir / SUMMARY).read_text())["phases"]
        return {**super().headline(out_dir), "tokens": sum(int(phases[p]["tokens"]) for p in PHASES)}

    def summarize(self, run, manifest: dict, stats: list[ShardStats]) -> dict:
        summary = json.loads((run.out_dir / SUMMARY).read_text())
        phases = summary["phases"]
        return {"stage": "pack", **{p: phases[p]["n_seq"] for p in PHASES},
                "fill_ratio": {p: round(phases[p]["fill_ratio"], 4) for p in PHASES}}


def mixture_audit(run, tokenizer_json: Path, sample: list[str], sample_sources: list[str]) -> dict:
    """Data Mixture Inference on the tokenizer's merges vs the source shares (in bytes) of what it was trained
    on: the tokenizer sample, or for an imported tokenizer the phase-1 blend's (character) shares."""
    acfg, started = run.cfg["mixture_audit"], time.monotonic()
    if not auditable(tokenizer_json):
        return {"skipped": "not a byte-level BPE without a normalizer: its merges cannot be replayed"}
    blend_path = run.input_dir / "blend.json" if run.input_dir is not None else None
    blend = {r["source"]: r["share"] for r in blend_rows(json.loads(blend_path.read_text()))
             if r["phase"] == "phase1" and r["share"] is not None} if blend_path and blend_path.exists() else None
    texts = audit_sample(run, run.input_shards("phase1"), acfg["sample_chars_per_source"])
    if not texts:
        return {"skipped": "data/mix/phase1 is empty"}
    inferred = infer_shares(tokenizer_json, texts, acfg["merges"], acfg["top_pairs"])
    inferred.pop("seconds")  # pack.json stays a function of its inputs
    actual, actual_from = (byte_shares(sample, sample_sources), "tokenizer_sample") if sample else (blend, "blend")
    result = {**audit(inferred, actual or {}, acfg["warn_at"], blend), "actual_from": actual_from}
    log.log(logging.WARNING if result["warn"] else logging.INFO,
            "pack: mixture audit: inferred vs %s shares differ by %.4f (total variation; warn at %.2f), %.1fs",
            actual_from, result["total_variation"], acfg["warn_at"], time.monotonic() - started)
    return result
