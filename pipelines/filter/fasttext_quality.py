"""DCLM-style quality classifier: fastText trained on curated text (positive) vs raw web (negative).

``python -m pipelines.filter.fasttext_quality`` (the ``quality_model`` stage of dvc.yaml) reads
``data/ingest``, picks up to ``max_per_class`` records per class by a seeded hash of the id
(balanced classes), holds out ``heldout_fraction`` of each class for an accuracy estimate,
trains with one thread and a fixed seed (fastText is deterministic then), and writes
``models/quality/quality.bin`` plus ``card.json`` (data, params, held-out accuracy, model hash).
The filter stage scores every record with ``score_texts``: P(__label__hq). (Select trains its own
classifier in-stage: ``pipelines.select.ngram_classifier``.)
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import tempfile
from pathlib import Path


from pipelines import stages
from pipelines.config import load_params, resolve, section
from pipelines.core.atomic import write_json_atomic
from pipelines.core.hashing import params_hash, sha256_file
from pipelines.core.shards import read_shard, stage_shards
from pipelines.filter.takedown import Takedown

log = logging.getLogger(__name__)
MODEL_DIR = stages.output("quality_model")
MODEL_FILE = "quality.bin"
CARD_FILE = "card.json"
POSITIVE, NEGATIVE = "__label__hq", "__label__web"
_SPACE = re.compile(r"\s+")

DEFAULTS = {"enabled": True, "positive_sources": ["wikipedia", "books", "news"], "max_per_class": 20000,
            "max_chars": 20000, "heldout_fraction": 0.1, "epoch": 5, "lr": 0.1, "dim": 16, "word_ngrams": 2,
            "bucket": 65536, "min_count": 1, "web_keep_fraction": 0.8}


def config(filter_section: dict) -> dict:
    cfg = dict(DEFAULTS)
    cfg.update(filter_section.get("quality_model") or {})
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"filter.quality_model: unknown key(s) {sorted(unknown)}")
    if not 0 < float(cfg["web_keep_fraction"]) <= 1:
        raise ValueError(f"filter.quality_model.web_keep_fraction must be in (0, 1], got {cfg['web_keep_fraction']}")
    return cfg


def normalize(text: str, max_chars: int) -> str:
    """One line, lowercased, whitespace collapsed (fastText reads a line per example)."""
    return _SPACE.sub(" ", (text or "")[:max_chars]).strip().lower()


def _hash(seed: int, rid: str) -> str:
    return hashlib.sha1(f"{seed}\x00{rid}".encode()).hexdigest()


def training_examples(in_dir: Path, positive_sources: list[str], exempt: list[str], seed: int,
                      max_per_class: int, max_chars: int, takedown: Takedown | None = None) -> dict[str, list[tuple[str, str]]]:
    """(hash, text) per label: positives from the curated reference sources, negatives from web records;
    taken-down records train nothing."""
    pos_set, exempt_set = set(positive_sources), set(exempt)
    by_label: dict[str, list[tuple[str, str]]] = {POSITIVE: [], NEGATIVE: []}
    for ref in stage_shards(in_dir, "ingest"):
        t = read_shard(ref.uri, columns=["id", "url", "source", "text"])
        for rid, url, source, text in zip(t.column("id").to_pylist(), t.column("url").to_pylist(),
                                          t.column("source").to_pylist(), t.column("text").to_pylist()):
            if takedown and takedown.match(rid, url):
                continue
            label = POSITIVE if source in pos_set else NEGATIVE if source not in exempt_set else None
            line = normalize(text, max_chars) if label else ""
            if line:
                by_label[label].append((_hash(seed, rid), line))
    n = min(len(by_label[POSITIVE]), len(by_label[NEGATIVE]), int(max_per_class))
    if n < 2:
        raise ValueError(f"quality_model: need >= 2 records per class in {in_dir}, have "
                         f"{len(by_label[POSITIVE])} positive ({sorted(pos_set)}) and {len(by_label[NEGATIVE])} web")
    return {label: sorted(rows)[:n] for label, rows in by_label.items()}


def _train_child(ft_args: dict, out_path: str) -> None:
    import fasttext

    fasttext.train_supervised(**ft_args).save_model(out_path)


def train(params: dict) -> dict:
    import fasttext

    fcfg = section(params, "filter")
    cfg = config(fcfg)
    seed = int(params.get("seed", 0))
    in_dir, out_dir = stages.output_dir("ingest"), resolve(MODEL_DIR)
    examples = training_examples(in_dir, cfg["positive_sources"], fcfg.get("exempt_sources") or [], seed,
                                 cfg["max_per_class"], cfg["max_chars"], Takedown.from_config(fcfg.get("takedown")))
    train_rows, held = [], []
    for label, rows in examples.items():
        n_held = int(len(rows) * float(cfg["heldout_fraction"]))
        held += [(label, text) for _, text in rows[:n_held]]
        train_rows += [(h, f"{label} {text}") for h, text in rows[n_held:]]
    train_rows.sort()  # interleaves the classes by the seeded hash: a deterministic shuffle
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        data = Path(tmp) / "train.txt"
        data.write_text("".join(line + "\n" for _, line in train_rows), encoding="utf-8")
        tmp_model = Path(tmp) / MODEL_FILE
        ft_args = dict(input=str(data), epoch=int(cfg["epoch"]), lr=float(cfg["lr"]), dim=int(cfg["dim"]),
                       wordNgrams=int(cfg["word_ngrams"]), bucket=int(cfg["bucket"]), minCount=int(cfg["min_count"]),
                       thread=1, seed=seed, verbose=0)
        # A fresh process per training: fastText-numpy2-wheel 0.9.3 can hit "Encountered NaN" when a
        # second model is trained in the same process; in a fresh one it is deterministic (same bytes).
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.apply(_train_child, (ft_args, str(tmp_model)))
        os.replace(tmp_model, out_dir / MODEL_FILE)
    model = fasttext.load_model(str(out_dir / MODEL_FILE))
    correct = 0
    if held:
        labels = model.predict([t for _, t in held])[0]
        correct = sum(lab[0] == gold for lab, (gold, _) in zip(labels, held))
    card = {
        "model": f"{MODEL_DIR}/{MODEL_FILE}",
        "sha256": sha256_file(out_dir / MODEL_FILE),
        "version": params_hash({"cfg": {k: v for k, v in cfg.items() if k != "web_keep_fraction"},  # the filter's
                                "seed": seed, "data": [h for h, _ in train_rows]})[:16],
        "labels": {"positive": POSITIVE, "negative": NEGATIVE},
        "positive_sources": cfg["positive_sources"],
        "train_examples": {POSITIVE: sum(1 for _, l in train_rows if l.startswith(POSITIVE + " ")),
                           NEGATIVE: sum(1 for _, l in train_rows if l.startswith(NEGATIVE + " "))},
        "heldout_examples": len(held),
        "heldout_accuracy": round(correct / len(held), 6) if held else None,
        "fasttext": {"epoch": cfg["epoch"], "lr": cfg["lr"], "dim": cfg["dim"], "wordNgrams": cfg["word_ngrams"],
                     "bucket": cfg["bucket"], "minCount": cfg["min_count"], "thread": 1, "seed": seed},
    }
    write_json_atomic(out_dir / CARD_FILE, card)
    log.info("quality_model: trained on %s, held-out accuracy %s", card["train_examples"], card["heldout_accuracy"])
    return card


class QualityScorer:
    """Loads the trained model once per process; scores are P(hq) rounded to 6 digits (stable across runs)."""

    def __init__(self, model_path: Path, max_chars: int):
        import fasttext

        if not model_path.exists():
            raise FileNotFoundError(f"{model_path}: no quality model (run the quality_model stage first)")
        self.model = fasttext.load_model(str(model_path))
        self.max_chars = max_chars

    def score(self, texts: list[str]) -> list[float]:
        lines = [normalize(t, self.max_chars) for t in texts]
        labels, probs = self.model.predict(lines, k=2)
        out = []
        for labs, ps in zip(labels, probs):
            p = dict(zip(labs, ps)).get(POSITIVE, 0.0)
            out.append(round(float(min(max(p, 0.0), 1.0)), 6))
        return out


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(train(load_params()), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
