"""Downstream evaluation with lm-evaluation-harness, on local task files only (no hub access).

The task configs live next to this module (``tasks/*.yaml``): standard lm-eval YAML
with ``dataset_path: json`` and ``data_files`` relative to the project root, which is
made absolute here before the config is handed to ``lm_eval.simple_evaluate`` as a dict.
The model is our checkpoint behind a small ``lm_eval.api.model.LM`` subclass
(``CheckpointLM``): lm-eval's own ``HFLM`` needs ``accelerate``, which the project does
not install, and a plain causal LM needs only three request types.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from lm_eval.api.model import LM

from pipelines.config import resolve

log = logging.getLogger(__name__)
TASK_DIR = Path(__file__).resolve().parent / "tasks"


def task_configs(names: list[str]) -> list[dict]:
    """The named local task configs, with their data files resolved against the project root."""
    configs = []
    for name in names:
        path = TASK_DIR / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in TASK_DIR.glob("*.yaml"))
            raise ValueError(f"evaluate.lm_eval.tasks: unknown task {name!r} (local tasks: {known})")
        config = yaml.safe_load(path.read_text())
        files = config.get("dataset_kwargs", {}).get("data_files", {})
        for split, rel in files.items():
            files[split] = str(resolve(rel))
            if not Path(files[split]).exists():
                raise FileNotFoundError(f"task {name}: data file {files[split]} does not exist")
        configs.append(config)
    return configs


def _clean(value):
    """JSON-safe numbers: NaN/inf (e.g. stderr of a one-item sample) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class CheckpointLM(LM):
    """lm-eval's three request types for a causal LM without BOS (like our training data).

    A continuation is scored token by token after its context (context and continuation are
    tokenized separately, as lm-eval's HFLM does); an empty context is replaced by EOS, the
    token that precedes every document in a packed training sequence.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_length: int | None = None):
        super().__init__()
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length = int(max_length or getattr(model.config, "max_position_embeddings", 2048))
        self._device = next(model.parameters()).device

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy decode) per pair."""
        out = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = []
            for ctx, cont in pairs[i:i + self.batch_size]:
                ids = ((ctx or [self.tokenizer.eos_token_id]) + cont)[-(self.max_length + 1):]
                chunk.append((ids, len(cont)))
            width = max(len(ids) - 1 for ids, _ in chunk)
            batch = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            for j, (ids, _) in enumerate(chunk):  # right padding: causal attention ignores it
                batch[j, :len(ids) - 1] = torch.tensor(ids[:-1])
            logprobs = F.log_softmax(self.model(input_ids=batch.to(self._device)).logits.float(), dim=-1)
            for j, (ids, n_cont) in enumerate(chunk):
                n_in = len(ids) - 1
                lp = logprobs[j, n_in - n_cont:n_in]
                target = torch.tensor(ids[-n_cont:], device=lp.device)
                total = float(lp.gather(1, target[:, None]).sum())
                out.append((total, bool((lp.argmax(-1) == target).all())))
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self._score([(self._encode(ctx), self._encode(cont)) for ctx, cont in (r.args for r in requests)])

    def loglikelihood_rolling(self, requests) -> list[float]:
        # Whole-text log-likelihood in windows of max_length tokens (each after the previous one).
        results = []
        for (text, *_) in (r.args for r in requests):
            ids = self._encode(text)
            pairs, start = [], 0
            while start < len(ids):
                cont = ids[start:start + self.max_length]
                pairs.append((ids[max(0, start - 1):start] if start else [], cont))
                start += len(cont)
            results.append(sum(lp for lp, _ in self._score(pairs)))
        return results

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        """Greedy decoding, one request at a time (generation is a small, optional use here)."""
        results = []
        for ctx, kwargs in (r.args for r in requests):
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            ids = self._encode(ctx) or [self.tokenizer.eos_token_id]
            new: list[int] = []
            text = ""
            for _ in range(int(kwargs.get("max_gen_toks", 128))):
                window = (ids + new)[-self.max_length:]
                nxt = int(self.model(input_ids=torch.tensor([window], device=self._device)).logits[0, -1].argmax())
                if nxt == self.tokenizer.eos_token_id:
                    break
                new.append(nxt)
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                if any(u in text for u in until):
                    break
            for u in until:
                text = text.split(u)[0]
            results.append(text)
        return results


def run_lm_eval(model, tokenizer, tasks: list[str], *, limit: int | None, batch_size: int = 8,
                seed: int = 0) -> dict:
    """{task: {metric: value, ..., "n": items}} for our model on the local tasks."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the json loader needs no hub; make sure it asks none
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = CheckpointLM(model, tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=task_configs(tasks), task_manager=TaskManager(include_defaults=False),
                          limit=limit, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                          fewshot_random_seed=seed, log_samples=False, bootstrap_iters=0)
    results = {}
    for task, metrics in sorted(out["results"].items()):
        row = {}
        for key, value in metrics.items():
            if key == "alias" or not isinstance(value, (int, float)):
                continue
            row[key.replace(",none", "")] = _clean(float(value))
        row["n"] = int(out.get("n-samples", {}).get(task, {}).get("effective", 0))
        results[task] = row
    return results
