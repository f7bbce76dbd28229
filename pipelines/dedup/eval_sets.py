"""Evaluation sets for decontamination: a benchmark file -> the text of each item.

An item's text is what a model is scored on (question + the correct answer, or question + its choices).
A set in ``dedup.decontam.sets`` is a file and a way to read its rows:

- ``format: <preset>`` for a known benchmark layout (PRESETS: gsm8k, humaneval, commonsenseqa, truthfulqa,
  openbookqa, arc, mmlu, hellaswag); the file format comes from the path's suffix. A set without a format
  uses the preset of its own name.
- ``template: "{Question} {Best Answer}"`` or ``fields: [question.stem, question.choices.text]`` (joined by
  spaces) for any other file; ``format: jsonl | csv | parquet`` or the suffix (.jsonl, .json, .csv, .parquet;
  .gz for JSONL and CSV) says how to read it. ``header: false`` reads a CSV without a header row; its
  columns are then named "0", "1", ...

A field is a dotted path into a row (``question.stem``). Through a list it maps over the elements
(``question.choices.text``: every choice's text) or picks one by index (``endings.0``). A list value
becomes its elements joined by spaces; a null becomes the empty string; a missing key is an error naming
the set, the row and the field. The path follows the one input rule (pipelines.core.storage.input_uri).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pipelines.core.storage import input_uri, is_s3, open_input

FILE_FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
SPEC_KEYS = {"path", "format", "template", "fields", "header"}


class FieldError(LookupError):
    """A row lacks what the set's template or preset reads (the loader adds the set, file and row)."""


# ---------------------------------------------------------------- fields and templates

def field_value(row: dict, path: str):
    """The value at a dotted ``path`` of ``row`` (a flat column whose name holds dots is found as well)."""
    if isinstance(row, dict) and path in row:
        return row[path]
    value = row
    for key in path.split("."):
        value = _step(value, key, path)
    return value


def _step(value, key: str, path: str):
    if isinstance(value, dict):
        if key not in value:
            raise FieldError(f"no field {path!r} (no key {key!r} among {sorted(value)})")
        return value[key]
    if isinstance(value, (list, tuple)):
        if key.isdigit():
            if int(key) >= len(value):
                raise FieldError(f"field {path!r}: index {key} of a list of {len(value)}")
            return value[int(key)]
        return [_step(v, key, path) for v in value]  # every element's field (e.g. each choice's text)
    raise FieldError(f"no field {path!r} (a {type(value).__name__} has no key {key!r})")


def as_text(value, path: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return " ".join(t for t in (as_text(v, path) for v in value) if t)
    if isinstance(value, dict):
        raise FieldError(f"field {path!r} is a mapping: name one of its keys ({', '.join(sorted(value))})")
    return str(value)  # numbers, booleans


def text_of(row: dict, path: str) -> str:
    return as_text(field_value(row, path), path)


@dataclass(frozen=True)
class Template:
    """Literal text and fields, from ``"{question} {answer}"`` (``{{``/``}}`` are literal braces)."""
    parts: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, template: str) -> "Template":
        parts = []
        for literal, name, spec, conversion in string.Formatter().parse(template):
            if name is not None and (not name.strip() or spec or conversion):
                raise ValueError(f"only {{field}} placeholders, got {{{name}{'!' + conversion if conversion else ''}"
                                 f"{':' + spec if spec else ''}}}")
            parts.append((literal, name))
        if not any(name for _, name in parts):
            raise ValueError("names no field")
        return cls(tuple(parts))

    @classmethod
    def of_fields(cls, fields: list[str]) -> "Template":
        return cls(tuple((" " if i else "", f) for i, f in enumerate(fields)))

    def __call__(self, row: dict) -> str:
        return "".join(literal + (text_of(row, name) if name else "") for literal, name in self.parts)


# ---------------------------------------------------------------- presets

def _gsm8k(row: dict) -> str:
    return f"{text_of(row, 'question')}\n{text_of(row, 'answer')}"


def _humaneval(row: dict) -> str:
    return f"{text_of(row, 'prompt')}{text_of(row, 'canonical_solution')}"


def _commonsenseqa(row: dict) -> str:
    """The question and all its choices (the answer key of the test split is hidden)."""
    question = field_value(row, "question")
    if isinstance(question, dict):  # the original release nests {stem, choices}
        return " ".join([text_of(question, "stem")] + [text_of(c, "text") for c in question.get("choices", [])])
    return " ".join([as_text(question)] + list((row.get("choices") or {}).get("text", [])))


def _truthfulqa(row: dict) -> str:
    """TruthfulQA.csv (Question, Best Answer) or the HF generation split (question, best_answer)."""
    if "Question" in row:
        return f"{text_of(row, 'Question')} {text_of(row, 'Best Answer')}"
    return f"{text_of(row, 'question')} {text_of(row, 'best_answer')}"


def _correct(choices: list, index: int, what: str) -> str:
    if not 0 <= index < len(choices):
        raise FieldError(f"{what} {index} is out of range for {len(choices)} choices")
    return as_text(choices[index])


def _labelled(texts: list, labels: list, key) -> str:
    labels = [str(label) for label in labels]
    if str(key) not in labels:
        raise FieldError(f"answerKey {key!r} is not one of the choice labels {labels}")
    return as_text(texts[labels.index(str(key))])


def _stem_and_answer(row: dict) -> str:
    """OpenBookQA and ARC: the question stem and the choice whose label is answerKey."""
    if isinstance(row.get("question"), dict):  # original releases: question {stem, choices [{text, label}]}
        stem, choices = text_of(row, "question.stem"), "question.choices"
    else:  # HF: question (ARC) or question_stem (OpenBookQA), choices {text: [...], label: [...]}
        stem, choices = text_of(row, "question_stem" if "question_stem" in row else "question"), "choices"
    answer = _labelled(field_value(row, f"{choices}.text"), field_value(row, f"{choices}.label"),
                       field_value(row, "answerKey"))
    return f"{stem} {answer}"


def _answer_index(answer) -> int:
    """MMLU's answer: an index (HF) or a letter A-D (the original CSV)."""
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        return ord(answer.strip().upper()) - ord("A")
    try:
        return int(answer)
    except (TypeError, ValueError):
        raise FieldError(f"answer {answer!r} is neither a choice index nor a letter") from None


def _mmlu(row: dict) -> str:
    """The question and its correct choice: HF (question, choices, answer) or the original headerless CSV
    (question, A, B, C, D, answer letter)."""
    if "choices" in row:
        choices, answer, question = field_value(row, "choices"), row.get("answer"), text_of(row, "question")
    elif "0" in row:
        question, choices, answer = text_of(row, "0"), [text_of(row, str(i)) for i in range(1, 5)], text_of(row, "5")
    else:
        raise FieldError(f"not an MMLU row: needs question, choices, answer or six unnamed columns "
                         f"(header: false); has {sorted(row)}")
    return f"{question} {_correct(choices, _answer_index(answer), 'answer')}"


def _hellaswag(row: dict) -> str:
    """The context and the correct ending; the test split hides its labels, so there the context alone."""
    label = row.get("label")
    if label is None or label == "":
        return text_of(row, "ctx")
    return f"{text_of(row, 'ctx')} {_correct(field_value(row, 'endings'), _answer_index(label), 'label')}"


@dataclass(frozen=True)
class Preset:
    read: Callable[[dict], str]
    header: bool = True  # whether a CSV of this benchmark has a header row


PRESETS: dict[str, Preset] = {
    "gsm8k": Preset(_gsm8k), "humaneval": Preset(_humaneval), "commonsenseqa": Preset(_commonsenseqa),
    "truthfulqa": Preset(_truthfulqa), "openbookqa": Preset(_stem_and_answer), "arc": Preset(_stem_and_answer),
    "mmlu": Preset(_mmlu, header=False), "hellaswag": Preset(_hellaswag),
}


# ---------------------------------------------------------------- the set spec

@dataclass(frozen=True)
class SetReader:
    """How one set is read: where, which file format, and row -> item text."""
    name: str
    path: str
    file_format: str
    header: bool
    item_text: Callable[[dict], str]
    what: str  # the preset or template, for messages


def _where(name: str) -> str:
    return f"dedup.decontam.sets.{name}"


def set_reader(name: str, spec) -> SetReader:
    """Validate one set's spec (no file access); every problem is a ValueError naming the set."""
    where = _where(name)
    if not isinstance(spec, dict) or not isinstance(spec.get("path"), str) or not spec["path"]:
        raise ValueError(f"{where} needs a path (and a format: a preset {sorted(PRESETS)}, or a file format "
                         f"{list(FILE_FORMATS)} with a template or fields)")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} (known: {sorted(SPEC_KEYS)})")
    fmt, template, fields = spec.get("format"), spec.get("template"), spec.get("fields")
    suffix = _SUFFIXES.get(Path(spec["path"].removesuffix(".gz")).suffix.lower())
    if template is not None or fields is not None:
        if template is not None and fields is not None:
            raise ValueError(f"{where}: give a template or fields, not both")
        if fmt is not None and fmt not in FILE_FORMATS:
            raise ValueError(f"{where}: format {fmt!r} with a template or fields must be a file format "
                             f"{list(FILE_FORMATS)}" + (" (it names a preset: drop the template)" if fmt in PRESETS else ""))
        if template is not None:
            if not isinstance(template, str):
                raise ValueError(f"{where}.template must be a string, got {template!r}")
            try:
                item_text = Template.parse(template)
            except ValueError as e:
                raise ValueError(f"{where}.template {template!r}: {e}") from None
        else:
            fields = [fields] if isinstance(fields, str) else fields
            if not isinstance(fields, list) or not fields or not all(isinstance(f, str) and f for f in fields):
                raise ValueError(f"{where}.fields must be a non-empty list of field names, got {fields!r}")
            item_text = Template.of_fields(fields)
        file_format, header, what = fmt or suffix, True, f"template {template or fields!r}"
    else:
        preset = name if fmt is None else fmt
        if preset in FILE_FORMATS:
            raise ValueError(f"{where}: format {preset!r} needs a template or fields (or name a preset: {sorted(PRESETS)})")
        if preset not in PRESETS:
            raise ValueError(f"{where}: unknown format {preset!r} (a preset: {sorted(PRESETS)}; or a file format "
                             f"{list(FILE_FORMATS)} with a template or fields)")
        file_format, header, item_text, what = suffix, PRESETS[preset].header, PRESETS[preset].read, f"{preset} format"
    if file_format is None:
        raise ValueError(f"{where}: cannot tell the file format of {spec['path']!r} from its suffix; "
                         f"set format: {' | '.join(FILE_FORMATS)} with a template or fields")
    if "header" in spec:
        if not isinstance(spec["header"], bool) or file_format != "csv":
            raise ValueError(f"{where}.header: true or false, for a csv file only (got {spec['header']!r} for {file_format})")
        header = spec["header"]
    return SetReader(name, spec["path"], file_format, header, item_text, what)


# ---------------------------------------------------------------- reading

@dataclass(frozen=True)
class EvalSet:
    name: str
    uri: str
    sha256: str  # of the file's bytes, local or on S3: the set is a dependency of what it decides
    texts: list[str]


def read_bytes(uri: str, name: str) -> bytes:
    if not is_s3(uri) and not Path(uri).is_file():
        raise FileNotFoundError(f"{_where(name)}: eval set {uri} does not exist")
    with open_input(uri) as f:
        return f.read()


def file_sha256(spec: dict, root: Path, name: str) -> str:
    return hashlib.sha256(read_bytes(input_uri(spec["path"], root), name)).hexdigest()


def _rows(data: bytes, reader: SetReader) -> Iterator[tuple[int, dict]]:
    """(row number, row) of the file; row numbers count from 1 (CSV: data rows after the header)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if reader.file_format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(pa.BufferReader(data)).to_pylist(), 1)
        return
    text = data.decode("utf-8-sig")
    if reader.file_format == "csv":
        rows = csv.reader(io.StringIO(text, newline=""))
        columns = next(rows, []) if reader.header else None
        for n, values in enumerate(rows, 1):
            yield n, dict(zip(columns or map(str, range(len(values))), values))
        return
    if text.lstrip().startswith("["):  # a JSON array of rows rather than JSON Lines
        yield from enumerate(json.loads(text), 1)
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{_where(reader.name)}: {reader.path}:{n}: not JSON ({e})") from None


def load_set(name: str, spec: dict, root: Path) -> EvalSet:
    """Every item's text, in file order. A row without a field the set reads is an error naming both."""
    reader = set_reader(name, spec)
    uri = input_uri(reader.path, root)
    data = read_bytes(uri, name)
    texts = []
    for n, row in _rows(data, reader):
        try:
            if not isinstance(row, dict):
                raise FieldError(f"a row is a mapping of fields, got {type(row).__name__}")
            texts.append(reader.item_text(row))
        except FieldError as e:
            raise ValueError(f"{_where(name)}: {reader.path} row {n} does not fit the {reader.what}: {e.args[0]}") from None
    if not texts:  # an empty or misread file would otherwise pass as "nothing contaminated"
        raise ValueError(f"{_where(name)}: {reader.path} holds no items")
    return EvalSet(name, uri, hashlib.sha256(data).hexdigest(), texts)
