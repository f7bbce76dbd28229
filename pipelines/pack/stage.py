"""pack: ``data/mix/{phase1,phase2}`` -> ``data/pack/`` token shards for the trainer.

1. Train a byte-level BPE on a deterministic phase-1 sample (unique documents in
   id order, up to ``tokenizer_sample_chars``), or take the local Hugging Face
   tokenizer in ``tokenizer_dir``, and save it under ``data/pack/tokenizer/``
   (``AutoTokenizer.from_pretrained`` loads it offline).
2. Per phase: tokenize every document (batches on the executor's process pool;
   with ``meco``, phase 1 only, after a no-loss ``URL: <domain>`` prefix) + EOS,
   pack into ``seq_len`` sequences
   (``best_fit``: best-fit-decreasing, documents cut only when longer than
   ``seq_len``; ``concat``: concatenate-and-split), pad the tails, shuffle the
   sequences with a seeded permutation and write them in the format of
   ``pipelines/pack/format.py`` plus ``lineage.parquet``.
3. ``data/pack/pack.json``: what was packed (fill, padding, splits, token
   shares per source), the tokenizer's ids, and file hashes for resuming.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import resolve, section
from pipelines.core.atomic import atomic_path, remove_stale_temps, write_json_atomic
from pipelines.core.executor import get_executor
from pipelines.core.hashing import sha256_file, stage_hash
from pipelines.core.manifest import MANIFEST
from pipelines.core.schema import domain_of
from pipelines.core.shards import read_all
from pipelines.pack.binpack import Placement, best_fit_decreasing, concat_split, split_documents
from pipelines.pack.format import INDEX, token_dtype, write_index, write_packed_shard
from pipelines.pack.tokenizer import (
    encode_task, import_tokenizer, sample_texts, save_tokenizer, special_ids, train_tokenizer,
)

log = logging.getLogger(__name__)

IN_DIR = "data/mix"
OUT_DIR = "data/pack"
PHASES = ("phase1", "phase2")
TOKENIZER_DIR = "tokenizer"
LINEAGE = "lineage.parquet"
SUMMARY = "pack.json"
PACKINGS = ("best_fit", "concat")
_SHARD_FILE_PREFIXES = ("tokens-", "doc_starts-", "doc_index-", "loss_mask-")


def _config(params: dict) -> dict:
    cfg = section(params, "pack")
    out = {
        "vocab_size": int(cfg.get("vocab_size", 4096)),
        "sample_chars": int(cfg.get("tokenizer_sample_chars", 4_000_000)),
        "seq_len": int(cfg.get("seq_len", 256)),
        "shuffle_seed": int(cfg.get("shuffle_seed", 0)),
        "packing": str(cfg.get("packing", "best_fit")),
        "max_seq": int(cfg.get("max_seq_per_shard", 8192)),
        "batch_docs": int(cfg.get("encode_batch_docs", 1000)),
        "tokenizer_dir": cfg.get("tokenizer_dir") or None,
        "meco": bool(cfg.get("meco", False)),
    }
    if out["packing"] not in PACKINGS:
        raise ValueError(f"params pack.packing must be one of {PACKINGS}, got {out['packing']!r}")
    for key, name, low in (("seq_len", "seq_len", 2), ("sample_chars", "tokenizer_sample_chars", 1),
                           ("max_seq", "max_seq_per_shard", 1), ("batch_docs", "encode_batch_docs", 1)):
        if out[key] < low:
            raise ValueError(f"params pack.{name} must be >= {low}, got {out[key]}")
    return out


# ---------------------------------------------------------------- tokenizing

def meco_prefix(domain: str | None, url: str | None, source: str) -> str:
    """MeCo's metadata prefix: the document's domain (its source name when it has no URL)."""
    return f"URL: {domain or domain_of(url) or source}\n\n"


class Documents:
    """One phase's rows (documents, repeats included) and the tokens of each unique record + EOS.

    With ``meco`` each record's tokens start with its ``URL: <domain>`` prefix
    (``prefix_length`` tokens per row, no-loss in the packed loss mask).
    """

    def __init__(self, table: pa.Table, tokenizer_dir: Path, eos_id: int, batch_docs: int,
                 executor_params: dict | None = None, meco: bool = False):
        self.ids = table.column("id").to_pylist()
        self.sources = table.column("source").to_pylist()
        self.copies = (table.column("blend_copy").to_pylist() if "blend_copy" in table.column_names
                       else [0] * table.num_rows)
        texts = table.column("text").to_pylist()
        first: dict[str, int] = {}
        for row, rid in enumerate(self.ids):
            if first.setdefault(rid, row) != row and texts[row] != texts[first[rid]]:
                raise ValueError(f"pack: record {rid} appears with two different texts (ids must be unique)")
        unique_rows = list(first.values())  # repeats share one tokenization
        prefixes = None
        if meco:
            col = lambda name: (table.column(name).to_pylist() if name in table.column_names  # noqa: E731
                                else [None] * table.num_rows)
            domains, urls = col("domain"), col("url")
            prefixes = [meco_prefix(domains[r], urls[r], self.sources[r]) for r in unique_rows]
        digest = sha256_file(Path(tokenizer_dir) / "tokenizer.json")
        tasks = [(str(tokenizer_dir), digest, [texts[r] for r in unique_rows[b:b + batch_docs]],
                  prefixes[b:b + batch_docs] if prefixes is not None else None)
                 for b in range(0, len(unique_rows), batch_docs)]
        results = get_executor(executor_params).map(encode_task, tasks)  # in task order: deterministic
        flat = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.uint32)
        body = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.int64)
        prefix = np.concatenate([r[2] for r in results]) if results else np.zeros(0, np.int64)
        lengths = body + 1  # + EOS after every document
        eos_at = np.cumsum(lengths) - 1
        self.flat = np.empty(int(lengths.sum()), dtype=np.uint32)
        is_text = np.ones(len(self.flat), dtype=bool)
        is_text[eos_at] = False
        self.flat[is_text] = flat
        self.flat[eos_at] = eos_id
        begin = np.cumsum(lengths) - lengths
        slot = {rid: k for k, rid in enumerate(first)}
        row_slot = np.asarray([slot[rid] for rid in self.ids], dtype=np.int64)
        self.begin = begin[row_slot] if len(row_slot) else np.zeros(0, np.int64)  # per row: offset in flat
        self.length = lengths[row_slot] if len(row_slot) else np.zeros(0, np.int64)
        self.prefix_length = prefix[row_slot] if len(row_slot) else np.zeros(0, np.int64)


def place(docs: Documents, seq_len: int, packing: str) -> Placement:
    if packing == "concat":
        return concat_split(docs.length, seq_len)
    return best_fit_decreasing(split_documents(docs.length, seq_len), seq_len)


# ---------------------------------------------------------------- writing a phase

def write_phase(phase_dir: Path, docs: Documents, placement: Placement, cfg: dict, vocab_size: int,
                eos_id: int, pad_id: int, phase_number: int, meco_phase: bool = False) -> dict:
    seq_len, pieces = cfg["seq_len"], placement.pieces
    n_seq = placement.n_seq
    # Seeded shuffle of whole sequences: output position -> packed sequence.
    perm = np.random.default_rng([cfg["shuffle_seed"], phase_number]).permutation(n_seq)
    position = np.empty(n_seq, dtype=np.int64)
    position[perm] = np.arange(n_seq)
    seq = position[placement.seq] if len(pieces) else np.zeros(0, np.int64)

    dtype = token_dtype(vocab_size)
    tokens = np.full((n_seq, seq_len), pad_id, dtype=dtype)
    src = docs.begin[pieces.doc] + pieces.offset
    for s, st, a, n in zip(seq.tolist(), placement.start.tolist(), src.tolist(), pieces.length.tolist()):
        tokens[s, st:st + n] = docs.flat[a:a + n]
    # MeCo: the part of each piece that lies in its document's prefix is no-loss.
    meco = meco_phase and bool(docs.prefix_length.any())
    loss_mask = np.ones((n_seq, seq_len), dtype=np.uint8) if meco else None
    if meco:
        no_loss = np.clip(docs.prefix_length[pieces.doc] - pieces.offset, 0, pieces.length)
        for s, st, n in zip(seq[no_loss > 0].tolist(), placement.start[no_loss > 0].tolist(),
                            no_loss[no_loss > 0].tolist()):
            loss_mask[s, st:st + n] = 0

    order = np.lexsort((placement.start, seq))  # pieces by (sequence, start)
    seq_o, start_o = seq[order], placement.start[order]
    bounds = np.searchsorted(seq_o, np.arange(n_seq + 1))
    doc_starts = [start_o[bounds[i]:bounds[i + 1]].tolist() for i in range(n_seq)]

    phase_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(phase_dir)
    n_shards = max(1, -(-n_seq // cfg["max_seq"]))
    rows = [slice(k * cfg["max_seq"], (k + 1) * cfg["max_seq"]) for k in range(n_shards)]
    shards = [write_packed_shard(phase_dir, k, tokens[r], doc_starts[r],
                                 loss_mask[r] if loss_mask is not None else None) for k, r in enumerate(rows)]
    keep = {name for s in shards for key, name in s.items() if key != "n_seq"}
    for p in phase_dir.glob("*.npy"):
        if p.name.startswith(_SHARD_FILE_PREFIXES) and p.name not in keep:
            p.unlink()  # shards of an earlier, larger layout

    doc_of = pieces.doc[order]
    lineage = pa.table({
        "seq": pa.array(seq_o, pa.int64()),
        "record_id": pa.array([docs.ids[d] for d in doc_of.tolist()], pa.string()),
        "source": pa.array([docs.sources[d] for d in doc_of.tolist()], pa.string()),
        "start": pa.array(start_o, pa.int32()),
        "end": pa.array(start_o + pieces.length[order], pa.int32()),
        # Additions to the contract: which copy of the record, and where the piece sits in its document.
        "blend_copy": pa.array([docs.copies[d] for d in doc_of.tolist()], pa.int32()),
        "doc_offset": pa.array(pieces.offset[order], pa.int64()),
        "doc_tokens": pa.array(docs.length[doc_of], pa.int64()),
        "prefix_tokens": pa.array(docs.prefix_length[doc_of], pa.int64()),  # MeCo prefix (no-loss), 0 without
    })
    with atomic_path(phase_dir / LINEAGE) as tmp:
        pq.write_table(lineage, tmp, compression="zstd")

    n_tokens = int(pieces.length.sum())
    padding = n_seq * seq_len - n_tokens
    tokens_in = int(docs.length.sum())
    if n_tokens != tokens_in or int((tokens != pad_id).sum()) != n_tokens:
        raise AssertionError(f"pack {phase_dir.name}: tokens in {tokens_in} != tokens packed {n_tokens}")
    per_source: dict[str, int] = {}
    for d, n in zip(pieces.doc.tolist(), pieces.length.tolist()):
        per_source[docs.sources[d]] = per_source.get(docs.sources[d], 0) + n
    summary = {
        "n_seq": n_seq, "seq_len": seq_len, "tokens": n_tokens, "padding": padding,
        "fill_ratio": n_tokens / (n_seq * seq_len) if n_seq else 0.0,
        "docs": len(docs.ids), "unique_docs": len(set(docs.ids)), "pieces": len(pieces),
        "docs_split": int((np.bincount(pieces.doc, minlength=len(docs.ids)) > 1).sum()),
        "docs_longer_than_seq_len": int((docs.length > seq_len).sum()),
        "no_loss_tokens": int(n_seq * seq_len - loss_mask.sum()) if loss_mask is not None else 0,
        "token_share": {s: n / n_tokens for s, n in sorted(per_source.items())} if n_tokens else {},
        "tokens_by_source": dict(sorted(per_source.items())),
    }
    write_index(phase_dir, {
        "seq_len": seq_len, "dtype": dtype.name, "vocab_size": vocab_size, "eos_id": eos_id, "pad_id": pad_id,
        "n_seq": n_seq, "tokens": n_tokens, "padding": padding, "shards": shards,
        "packing": cfg["packing"], "lineage": LINEAGE, "meco": meco,
    })
    return summary


# ---------------------------------------------------------------- entry point

def _output_files(out_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(out_dir)): sha256_file(p)
            for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name != SUMMARY}


def _inputs(in_dir: Path) -> dict[str, str]:
    out = {}
    for phase in PHASES:
        manifest = in_dir / phase / MANIFEST
        if not manifest.exists():
            raise FileNotFoundError(f"pack: {manifest} missing (run mix first)")
        out[phase] = sha256_file(manifest)
    return out


def _previous(out_dir: Path, inputs: dict, ph: str) -> dict | None:
    path = out_dir / SUMMARY
    try:
        prev = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if prev.get("params_hash") != ph or prev.get("inputs") != inputs or prev.get("files") != _output_files(out_dir):
        return None
    return prev


def run(params: dict) -> dict:
    cfg = _config(params)
    in_dir, out_dir = resolve(IN_DIR), resolve(OUT_DIR)
    inputs = _inputs(in_dir)
    if cfg["tokenizer_dir"]:
        src = resolve(cfg["tokenizer_dir"], allow_outside=True)
        if not (src / "tokenizer.json").is_file():
            raise FileNotFoundError(f"params pack.tokenizer_dir={src}: no tokenizer.json (a fast tokenizer is needed)")
        inputs["tokenizer"] = {p.name: sha256_file(p) for p in sorted(src.iterdir()) if p.is_file()}
    ph = stage_hash("pack", {"seed": params.get("seed"), "pack": section(params, "pack")})
    prev = _previous(out_dir, inputs, ph)
    if prev:
        log.info("pack: outputs already complete for these inputs and params, skipped")
        return {"stage": "pack", "skipped": True, **{p: prev["phases"][p]["n_seq"] for p in PHASES}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY).unlink(missing_ok=True)  # the summary marks completion: absent while writing

    tables = {p: read_all(in_dir / p, columns=None) for p in PHASES}
    for p, t in tables.items():
        missing = [c for c in ("id", "source", "text") if c not in t.column_names]
        if missing:
            raise ValueError(f"pack: data/mix/{p} lacks column(s) {missing} (or has no rows)")
    p1 = tables["phase1"]
    if p1.num_rows == 0:
        raise ValueError("pack: data/mix/phase1 is empty: nothing to train the tokenizer on")

    if cfg["tokenizer_dir"]:
        sample = []
        import_tokenizer(resolve(cfg["tokenizer_dir"], allow_outside=True), out_dir / TOKENIZER_DIR)
    else:
        sample = list(sample_texts(p1.column("id").to_pylist(), p1.column("text").to_pylist(), cfg["sample_chars"]))
        save_tokenizer(train_tokenizer(iter(sample), cfg["vocab_size"]), out_dir / TOKENIZER_DIR)
    eos_id, pad_id, vocab_size = special_ids(out_dir / TOKENIZER_DIR)  # pack with exactly what was saved
    if eos_id == pad_id:
        raise ValueError("pack: the tokenizer's eos and pad ids coincide")

    phases = {}
    for number, phase in enumerate(PHASES, start=1):
        meco = cfg["meco"] and phase == "phase1"  # phase 2 (the cool-down) packs without the prefix
        docs = Documents(tables[phase], out_dir / TOKENIZER_DIR, eos_id, cfg["batch_docs"],
                         params.get("executor"), meco=meco)
        placement = place(docs, cfg["seq_len"], cfg["packing"])
        phases[phase] = write_phase(out_dir / phase, docs, placement, cfg, vocab_size, eos_id, pad_id, number,
                                    meco_phase=meco)
        log.info("pack %s: %d sequences, fill %.4f", phase, phases[phase]["n_seq"], phases[phase]["fill_ratio"])

    summary = {
        "params_hash": ph, "inputs": inputs, "packing": cfg["packing"], "seq_len": cfg["seq_len"],
        "vocab_size": vocab_size, "vocab_size_requested": cfg["vocab_size"], "eos_id": eos_id, "pad_id": pad_id,
        "dtype": token_dtype(vocab_size).name, "tokenizer": TOKENIZER_DIR, "meco": cfg["meco"],
        "tokenizer_source": cfg["tokenizer_dir"] or "trained",
        "tokenizer_sample": {"docs": len(sample), "chars": sum(len(t) for t in sample)},
        "phases": phases, "files": _output_files(out_dir),
    }
    write_json_atomic(out_dir / SUMMARY, summary)
    return {"stage": "pack", "skipped": False, **{p: phases[p]["n_seq"] for p in PHASES},
            "fill_ratio": {p: round(phases[p]["fill_ratio"], 4) for p in PHASES}}
