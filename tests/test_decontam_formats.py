"""Decontamination against any benchmark file: presets and templates over CSV, JSONL, Parquet and nested JSON,
items of every length (whole-item matching below the n-gram), coverage in the manifest and the gate, one path
rule for inputs. The benchmark files are written here, a few items each, in each benchmark's real field layout."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.checks.gate import GateFailed, run_gate
from pipelines.core.shards import read_all
from pipelines.core.storage import expand_inputs, input_uri
from pipelines.dedup.decontam import CONTAMINATED, ContaminationIndex
from pipelines.dedup.eval_sets import load_set, set_reader
from pipelines.dedup.normalize import words
from pipelines.stages import runner
from tests.fixtures.dedup_inputs import dedup_record, write_filter_output
from tests.fixtures.real_text import news_articles, web_articles

run = runner("dedup")

# Per benchmark: the item text each row must give (question + correct answer, as the preset or template reads it),
# by length in words: 3 and 6 (under the 13-gram: matched whole) and 20 (13-grams).
TRUTHFULQA = [  # TruthfulQA.csv: Type, Category, Question, Best Answer, Correct Answers, Incorrect Answers, Source
    ("Tallest mountain?", "Everest"),
    ("Who painted the Mona Lisa?", "Leonardo"),
    ("What happens if you swallow chewing gum according to the common myth repeated by parents?",
     "It passes through your system"),
    ("Zirconium?", "Zr"),  # two words: too short to check
]
MMLU = [  # HF cais/mmlu: question, subject, choices, answer (index)
    ("Sodium symbol?", ["K", "Na", "S", "N"], 1),
    ("Which planet is the largest?", ["Mars", "Jupiter", "Venus", "Earth"], 1),
    ("In the Krebs cycle which molecule joins acetyl CoA to form citrate in the very first step?",
     ["Pyruvate alone", "Oxaloacetate of course", "Lactate", "Glucose"], 1),
]
OPENBOOKQA = [  # original release: id, question {stem, choices [{text, label}]}, answerKey
    ("Magnets attract?", ["iron", "wood", "glass", "paper"], "A"),
    ("Plants make food using what?", ["soil", "sunlight", "rocks", "wind"], "B"),
    ("Which property of a steel spoon lets a child hang it from a refrigerator door all afternoon?",
     ["Its shine", "Its weight", "Attraction to magnets", "Its length"], "C"),
]
HELLASWAG = [  # HF Rowan/hellaswag: ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split, split_type, label
    ("Grandma knits", ["rivers", "engines", "scarves", "clouds"], "2"),
    ("The chef slices the", ["ripe tomatoes", "old tires", "blue sky", "loud music"], "0"),
    ("Holding a long bamboo pole, the acrobat steps carefully onto the rope stretched between towers and then",
     ["sings loudly", "slowly walks across", "eats lunch", "falls asleep"], "1"),
]
LETTERS = "ABCD"


def truthfulqa_items() -> list[str]:
    return [f"{q} {a}" for q, a in TRUTHFULQA]


def mmlu_items() -> list[str]:
    return [f"{q} {c[a]}" for q, c, a in MMLU]


def openbookqa_items() -> list[str]:
    return [f"{q} {c[LETTERS.index(k)]}" for q, c, k in OPENBOOKQA]


def hellaswag_items() -> list[str]:
    return [f"{ctx} {e[int(label)]}" for ctx, e, label in HELLASWAG]


def write_truthfulqa_csv(path: Path, rows=TRUTHFULQA) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"])
        for q, a in rows:
            w.writerow(["Adversarial", "Misconceptions", q, a, f"{a}; I have no comment", "Something false",
                        "https://en.wikipedia.org/wiki/List_of_common_misconceptions"])
    return path


def write_mmlu_parquet(path: Path, rows=MMLU) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"question": [q for q, _, _ in rows], "subject": ["college_chemistry"] * len(rows),
                             "choices": [c for _, c, _ in rows], "answer": [a for _, _, a in rows]}), path)
    return path


def write_openbookqa_jsonl(path: Path, rows=OPENBOOKQA) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": f"7-{i:03d}", "question": {"stem": q, "choices": [
        {"text": t, "label": LETTERS[j]} for j, t in enumerate(c)]}, "answerKey": k}) for i, (q, c, k) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_hellaswag_jsonl_gz(path: Path, rows=HELLASWAG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, (ctx, endings, label) in enumerate(rows):
            head, _, tail = ctx.rpartition(" ")
            f.write(json.dumps({"ind": i, "activity_label": "Everyday", "ctx_a": head, "ctx_b": tail, "ctx": ctx,
                                "endings": endings, "source_id": f"activitynet~v_{i}", "split": "val",
                                "split_type": "indomain", "label": label}) + "\n")
    return path


def test_the_fixtures_have_the_lengths_the_tests_claim():
    for items in (truthfulqa_items()[:3], mmlu_items(), openbookqa_items(), hellaswag_items()):
        assert [len(words(t)) for t in items] == [3, 6, 20]
    assert len(words(truthfulqa_items()[3])) == 2


# ---------------------------------------------------------------- loading: presets, templates, fields

def test_presets_read_each_benchmark_layout(tmp_path):
    csv_path = write_truthfulqa_csv(tmp_path / "TruthfulQA.csv")
    assert load_set("truthfulqa", {"path": str(csv_path)}, tmp_path).texts == truthfulqa_items()  # preset of its name
    assert load_set("tqa", {"path": "TruthfulQA.csv", "format": "csv", "template": "{Question} {Best Answer}"},
                    tmp_path).texts == truthfulqa_items()
    hf_tqa = tmp_path / "truthful_qa_generation.parquet"
    pq.write_table(pa.table({"question": [q for q, _ in TRUTHFULQA], "best_answer": [a for _, a in TRUTHFULQA]}), hf_tqa)
    assert load_set("tqa", {"path": str(hf_tqa), "format": "truthfulqa"}, tmp_path).texts == truthfulqa_items()

    assert load_set("mmlu", {"path": str(write_mmlu_parquet(tmp_path / "mmlu.parquet"))}, tmp_path).texts == mmlu_items()
    # MMLU as HF jsonl, and the original headerless CSV (question, A, B, C, D, answer letter)
    (tmp_path / "mmlu.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                                                 for q, c, a in MMLU))
    assert load_set("mmlu", {"path": "mmlu.jsonl"}, tmp_path).texts == mmlu_items()
    with open(tmp_path / "college_chemistry_test.csv", "w", newline="") as f:
        csv.writer(f).writerows([q, *c, LETTERS[a]] for q, c, a in MMLU)
    assert load_set("m", {"path": "college_chemistry_test.csv", "format": "mmlu"}, tmp_path).texts == mmlu_items()

    obqa = write_openbookqa_jsonl(tmp_path / "obqa" / "test.jsonl")
    assert load_set("openbookqa", {"path": str(obqa)}, tmp_path).texts == openbookqa_items()
    # HF openbookqa: question_stem, choices {text, label}, answerKey
    (tmp_path / "obqa_hf.jsonl").write_text("".join(json.dumps({
        "id": "x", "question_stem": q, "choices": {"text": c, "label": list(LETTERS)}, "answerKey": k}) + "\n"
        for q, c, k in OPENBOOKQA))
    assert load_set("o", {"path": "obqa_hf.jsonl", "format": "openbookqa"}, tmp_path).texts == openbookqa_items()

    # ARC: the original nested layout (like OpenBookQA, numeric labels in some rows) and the HF flat one
    arc_rows = [("Which gas do plants absorb?", ["Oxygen", "Carbon dioxide", "Helium"], ["1", "2", "3"], "2"),
                ("Which is a mammal?", ["Shark", "Whale", "Trout", "Eel"], list(LETTERS), "B")]
    (tmp_path / "ARC-Challenge-Test.jsonl").write_text("".join(json.dumps({
        "id": "Mercury_1", "question": {"stem": q, "choices": [{"text": t, "label": lab} for t, lab in zip(c, labels)]},
        "answerKey": k}) + "\n" for q, c, labels, k in arc_rows))
    pq.write_table(pa.table({"id": ["a", "b"], "question": [r[0] for r in arc_rows],
                             "choices": [{"text": c, "label": labels} for _, c, labels, _ in arc_rows],
                             "answerKey": [r[3] for r in arc_rows]}), tmp_path / "arc_hf.parquet")
    arc_items = ["Which gas do plants absorb? Carbon dioxide", "Which is a mammal? Whale"]
    assert load_set("arc", {"path": "ARC-Challenge-Test.jsonl"}, tmp_path).texts == arc_items
    assert load_set("arc", {"path": "arc_hf.parquet"}, tmp_path).texts == arc_items

    hs = write_hellaswag_jsonl_gz(tmp_path / "hellaswag_val.jsonl.gz")
    assert load_set("hellaswag", {"path": str(hs)}, tmp_path).texts == hellaswag_items()
    # the test split hides its labels: the context alone is the item
    (tmp_path / "hellaswag_test.jsonl").write_text(json.dumps({"ctx": "A dog runs", "endings": ["x", "y"], "label": ""}))
    assert load_set("hellaswag", {"path": "hellaswag_test.jsonl"}, tmp_path).texts == ["A dog runs"]


def test_templates_read_dotted_paths_list_fields_and_literals(tmp_path):
    obqa = write_openbookqa_jsonl(tmp_path / "obqa.jsonl")
    # a list field maps over its elements: every choice's text, joined by spaces
    got = load_set("o", {"path": str(obqa), "fields": ["question.stem", "question.choices.text"]}, tmp_path).texts
    assert got[0] == "Magnets attract? iron wood glass paper"
    got = load_set("o", {"path": str(obqa), "template": "Q: {question.stem} {{A}}: {question.choices.0.text}"},
                   tmp_path).texts
    assert got[1] == "Q: Plants make food using what? {A}: soil"
    # a JSON array file, a gzipped CSV, a CSV without a header (columns "0", "1", ...), nulls and numbers
    (tmp_path / "rows.json").write_text(json.dumps([{"q": "Why?", "n": 3, "note": None}]))
    assert load_set("j", {"path": "rows.json", "template": "{q} {n} {note}"}, tmp_path).texts == ["Why? 3 "]
    with gzip.open(tmp_path / "plain.csv.gz", "wt", newline="") as f:
        csv.writer(f).writerows([["Is ice cold?", "yes"], ["Is fire cold?", "no"]])
    assert load_set("c", {"path": "plain.csv.gz", "header": False, "template": "{0} {1}"}, tmp_path).texts == [
        "Is ice cold? yes", "Is fire cold? no"]


@pytest.mark.parametrize("spec, message", [
    ({"path": "x.jsonl", "format": "jsonl"}, r"sets\.bench: format 'jsonl' needs a template or fields"),
    ({"path": "x.jsonl", "format": "mmlu2"}, r"sets\.bench: unknown format 'mmlu2'"),
    ({"path": "x.jsonl"}, r"sets\.bench: unknown format 'bench'"),
    ({"path": "x.jsonl", "format": "mmlu", "template": "{q}"}, r"sets\.bench: format 'mmlu' .* names a preset"),
    ({"path": "x.txt", "template": "{q}"}, r"sets\.bench: cannot tell the file format of 'x\.txt'"),
    ({"path": "x.jsonl", "template": "{q!r}"}, r"sets\.bench\.template '\{q!r\}': only \{field\} placeholders"),
    ({"path": "x.jsonl", "template": "no fields"}, r"sets\.bench\.template 'no fields': names no field"),
    ({"path": "x.jsonl", "template": "{q}", "fields": ["q"]}, r"sets\.bench: give a template or fields, not both"),
    ({"path": "x.jsonl", "fields": []}, r"sets\.bench\.fields must be a non-empty list"),
    ({"path": "x.parquet", "format": "mmlu", "header": False}, r"sets\.bench\.header: .*csv file only"),
    ({"path": "x.jsonl", "templat": "{q}", "format": "gsm8k"}, r"sets\.bench: unknown key\(s\) \['templat'\]"),
    ({"format": "gsm8k"}, r"sets\.bench needs a path"),
])
def test_bad_specs_are_refused_naming_the_set(spec, message):
    with pytest.raises(ValueError, match=message):
        set_reader("bench", spec)


def test_rows_that_do_not_fit_name_the_set_row_and_field(tmp_path):
    tqa = write_truthfulqa_csv(tmp_path / "TruthfulQA.csv")
    with pytest.raises(ValueError, match=r"sets\.tqa: .*TruthfulQA\.csv row 1 does not fit the template "
                                         r"'\{Question\} \{Best answer\}': no field 'Best answer'"):
        load_set("tqa", {"path": str(tqa), "template": "{Question} {Best answer}"}, tmp_path)
    obqa = write_openbookqa_jsonl(tmp_path / "obqa.jsonl")
    with pytest.raises(ValueError, match=r"sets\.o: .*row 1 .*field 'question' is a mapping: name one of its keys "
                                         r"\(choices, stem\)"):
        load_set("o", {"path": str(obqa), "fields": ["question"]}, tmp_path)
    with pytest.raises(ValueError, match=r"no field 'question\.stem\.text' \(a str has no key 'text'\)"):
        load_set("o", {"path": str(obqa), "fields": ["question.stem.text"]}, tmp_path)
    write_openbookqa_jsonl(obqa, [("Why?", ["a", "b"], "E")])
    with pytest.raises(ValueError, match=r"sets\.openbookqa: .*row 1 does not fit the openbookqa format: "
                                         r"answerKey 'E' is not one of the choice labels \['A', 'B'\]"):
        load_set("openbookqa", {"path": str(obqa)}, tmp_path)
    with pytest.raises(ValueError, match=r"sets\.mmlu: .*row 1 does not fit the mmlu format: not an MMLU row"):
        load_set("mmlu", {"path": str(tqa), "header": True}, tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"sets\.gsm8k: empty\.jsonl holds no items"):
        load_set("gsm8k", {"path": "empty.jsonl"}, tmp_path)


# ---------------------------------------------------------------- matching

def test_short_items_match_whole_and_only_whole():
    index = ContaminationIndex(ngram=13, min_words=3)
    index.add("tqa", truthfulqa_items())
    assert index.coverage["tqa"] == {"items": 4, "by_ngram": 1, "by_whole": 2, "too_short": 1}
    long_item = truthfulqa_items()[2]
    texts = [
        "Quiz night. TALLEST mountain: Everest! Next round.",  # 3 words, other case and punctuation: caught
        "The tallest mountain in the range, Everest, ...",  # not contiguous
        "who painted the mona lisa",  # 5 of the 6 words
        "So: who painted the Mona Lisa? Leonardo, of course.",
        "Zirconium? Zr.",  # a 2-word item is never checked
        " ".join(words(long_item)[:12]),  # a 12-word fragment of a 20-word item: no 13-gram
        "intro " + " ".join(words(long_item)[7:20]),  # its last 13 words
        "tallest mountain",  # an item's words split over two records are no match
        "everest and more",
        "",
    ]
    assert index.match(texts)[:, 0].tolist() == [True, False, False, True, False, False, True, False, False, False]


def test_items_under_min_words_are_not_checked_and_min_words_is_a_param():
    index = ContaminationIndex(ngram=13, min_words=7)
    index.add("tqa", truthfulqa_items())
    assert index.coverage["tqa"] == {"items": 4, "by_ngram": 1, "by_whole": 0, "too_short": 3}
    assert not index.match(["tallest mountain everest", "who painted the mona lisa leonardo"]).any()


# ---------------------------------------------------------------- one path rule for inputs

def test_one_path_rule_for_ingest_inputs_and_eval_sets(tmp_path, moto_s3, monkeypatch):
    root, outside = tmp_path / "ws", tmp_path / "elsewhere"
    assert input_uri("samples/eval/x.jsonl", root) == str(root / "samples/eval/x.jsonl")
    assert input_uri(str(outside / "x.jsonl"), root) == str(outside / "x.jsonl")
    assert input_uri("s3://evals/x.jsonl", root) == "s3://evals/x.jsonl"
    # ingest expands through the same rule: a file outside the workspace is an input like any other
    warc = outside / "crawl" / "a.warc.gz"
    warc.parent.mkdir(parents=True)
    warc.write_bytes(b"x")
    assert expand_inputs([str(outside / "crawl" / "*.warc.gz")], root) == [str(warc)]
    # an eval set on S3 reads and hashes like the local file
    local = write_openbookqa_jsonl(outside / "obqa.jsonl")
    moto_s3.setenv(monkeypatch)
    moto_s3.empty_bucket("evals").put_object(Bucket="evals", Key="obqa/test.jsonl", Body=local.read_bytes())
    from_s3 = load_set("openbookqa", {"path": "s3://evals/obqa/test.jsonl"}, root)
    from_disk = load_set("openbookqa", {"path": str(local)}, root)
    assert from_s3.texts == from_disk.texts == openbookqa_items()
    assert from_s3.sha256 == from_disk.sha256 == hashlib.sha256(local.read_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError, match=r"sets\.openbookqa: eval set .*elsewhere/nope\.jsonl does not exist"):
        load_set("openbookqa", {"path": str(outside / "nope.jsonl")}, root)


# ---------------------------------------------------------------- through the dedup stage and its gate

def _benchmarks(root: Path, outside: Path) -> dict[str, dict]:
    """Four sets, one per file format, configured through params alone; MMLU lives outside the workspace."""
    write_truthfulqa_csv(root / "evals" / "TruthfulQA.csv")
    write_openbookqa_jsonl(root / "evals" / "openbookqa" / "test.jsonl")
    write_hellaswag_jsonl_gz(root / "evals" / "hellaswag_val.jsonl.gz")
    mmlu = write_mmlu_parquet(outside / "mmlu" / "test-00000-of-00001.parquet")
    return {
        "truthfulqa": {"path": "evals/TruthfulQA.csv", "format": "csv", "template": "{Question} {Best Answer}"},
        "mmlu": {"path": str(mmlu), "format": "mmlu"},
        "openbookqa": {"path": "evals/openbookqa/test.jsonl", "format": "openbookqa"},
        "hellaswag": {"path": "evals/hellaswag_val.jsonl.gz"},
    }


def _planted(hosts: list[str]) -> tuple[list[dict], dict[str, str], set[str]]:
    """Real documents, some with an item pasted into the middle: (records, id -> benchmark it holds, clean ids)."""
    items = {"truthfulqa": truthfulqa_items(), "mmlu": mmlu_items(), "openbookqa": openbookqa_items(),
             "hellaswag": hellaswag_items()}
    inserts = [(name, items[name][k]) for name in items for k in range(3)]  # 3, 6 and 20 words of each
    long_tqa = words(truthfulqa_items()[2])
    misses = [
        truthfulqa_items()[3],  # 2 words: too short to check
        " ".join(words(mmlu_items()[1])[:5]),  # 5 of a 6-word item
        " ".join(long_tqa[:12]),  # 12 words of a 20-word item
        "Sodium, the symbol of which",  # words of a 3-word item, not in order
    ]
    records, holds, clean = [], {}, set()
    for i, text in enumerate(hosts):
        tokens = text.split()
        insert = inserts[i][1] if i < len(inserts) else misses[i - len(inserts)] if i < len(inserts) + len(misses) else ""
        rec = dedup_record("web", f"host-{i}", " ".join(tokens[:40]) + f"\n{insert}\n" + " ".join(tokens[40:]))
        records.append(rec)
        if i < len(inserts):
            holds[rec["id"]] = inserts[i][0]
        else:
            clean.add(rec["id"])
    return records, holds, clean


def test_stage_catches_items_of_every_length_in_every_format_and_the_gate_holds(workspace, tmp_path):
    workspace.update("checks.data_docs", False)
    workspace.update("checks.dedup.max_unchecked_share", 0.3)  # TruthfulQA: 1 of 4 items too short
    sets = _benchmarks(workspace.root, tmp_path / "elsewhere")
    params = workspace.update("dedup.decontam.sets", sets)
    records, holds, clean = _planted(news_articles(12) + web_articles(12))
    assert len(holds) == 12 and len(clean) == 12
    write_filter_output(workspace, records, 3)
    summary = run(params)

    removed = read_all(workspace.path("data", "dedup", "removed")).to_pylist()
    dropped = {r["id"]: json.loads(r["drop_detail"])["benchmarks"] for r in removed if r["drop_reason"] == CONTAMINATED}
    assert dropped == {rid: [name] for rid, name in holds.items()}
    assert {r["id"] for r in read_all(workspace.path("data", "dedup")).to_pylist()} == clean
    assert summary[CONTAMINATED] == 12 and all(summary[f"{CONTAMINATED}__{n}"] == 3 for n in sets)

    manifest = json.loads(workspace.path("data", "dedup", "_manifest.json").read_text())["decontam"]
    assert summary["decontam"] == manifest and (manifest["ngram"], manifest["min_words"]) == (13, 3)
    coverage = {n: {k: s[k] for k in ("items", "by_ngram", "by_whole", "too_short")} for n, s in manifest["sets"].items()}
    assert coverage == {"truthfulqa": {"items": 4, "by_ngram": 1, "by_whole": 2, "too_short": 1},
                        **{n: {"items": 3, "by_ngram": 1, "by_whole": 2, "too_short": 0}
                           for n in ("mmlu", "openbookqa", "hellaswag")}}
    mmlu_file = Path(sets["mmlu"]["path"])
    assert manifest["sets"]["mmlu"] == {**coverage["mmlu"], "path": str(mmlu_file),
                                        "sha256": hashlib.sha256(mmlu_file.read_bytes()).hexdigest()}

    report = run_gate("dedup", params)
    assert report["success"]
    assert any("truthfulqa: 1 of 4 items are too short" in w for w in report["warnings"])
    with pytest.raises(GateFailed, match="unchecked_share"):
        run_gate("dedup", workspace.update("checks.dedup.max_unchecked_share", 0.05))

    # A set the stage did not run with has no recorded coverage: the gate fails naming it.
    with pytest.raises(GateFailed, match=r"no decontamination coverage for eval set\(s\) \['truthfulqa_preset'\]"):
        run_gate("dedup", workspace.update("dedup.decontam.sets.truthfulqa_preset",
                                           {"path": "evals/TruthfulQA.csv", "format": "truthfulqa"}))
    params = workspace.update("dedup.decontam.sets", sets)
    workspace.update("checks.dedup.max_unchecked_share", 0.3)

    # The eval file is a dependency wherever it lives: a new MMLU item re-runs the stage and is caught.
    host = next(r for r in records if r["id"] in clean)
    *question, answer = host["text"].split()[80:85]  # five words of a clean record, past its insert
    write_mmlu_parquet(mmlu_file, MMLU + [(" ".join(question), [answer, "y"], 0)])
    again = run(params)
    assert again[f"{CONTAMINATED}__mmlu"] == 4 and again["decontam"]["sets"]["mmlu"]["items"] == 4
    assert host["id"] not in {r["id"] for r in read_all(workspace.path("data", "dedup")).to_pylist()}
