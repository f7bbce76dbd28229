"""Mixture search at toy size on real text: the process-pool run (dvc) and the mapped-task run
(Airflow DAG mixture_search via dag.test()) train the same proxies and write mixture.json with every
candidate's measured and predicted score; disabled search writes an empty result fast."""
from __future__ import annotations

import json
import shutil

import pytest

from pipelines.mixture_search import search
from tests.fixtures.airflow_dags import load_dag
from tests.fixtures.mixture_toy import toy  # noqa: F401 (fixture)
from tests.fixtures.project import REPO


def _check(doc):
    assert doc["domains"] == ["cluster_0", "cluster_1", "math", "news"]
    assert len(doc["candidates"]) == 4 and {c["round"] for c in doc["candidates"]} == {0, 1}
    for c in doc["candidates"]:
        assert sum(c["weights"].values()) == pytest.approx(1.0)
        assert 0 < c["bpb_mean"] < 20 and "predicted_bpb_mean" in c
    # Round 0 starts from the uniform anchor; phase 1 = mean of the 3 best measured (final: top_k_mean).
    r0 = [c for c in doc["candidates"] if c["round"] == 0]
    assert r0[0]["weights"] == pytest.approx({d: 0.25 for d in doc["domains"]})
    top = sorted(doc["candidates"], key=lambda c: c["bpb_mean"])[:3]
    mean = {d: sum(c["weights"][d] for c in top) / 3 for d in doc["domains"]}
    assert doc["phase1_weights"] == pytest.approx(mean)
    assert set(doc["predictor"]["comparison"]) == {"lightgbm", "linear_regmix", "mixing_law"}


def test_disabled_search_writes_empty_mixture(workspace):
    assert search.run(workspace.params()) == {"stage": "mixture_search", "enabled": False}
    assert json.loads(workspace.path("data/mixture/mixture.json").read_text())["candidates"] == []


def test_pool_and_mapped_tasks_run_the_same_search(toy, airflow_db, monkeypatch):
    pool = search.run(toy.params())
    doc = json.loads(toy.path("data/mixture/mixture.json").read_text())
    _check(doc)
    assert pool["candidates"] == 4

    shutil.copytree(REPO / "dags", toy.path("dags"), ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(toy.path("dags")))
    toy.path("data/mixture/mixture.json").unlink()
    run = load_dag(toy.root, "mixture_search").test()
    assert str(run.state) == "success"
    proxies = [ti for ti in run.get_task_instances() if ti.task_id.startswith("proxy_r")]
    assert len(proxies) == 4 and all(ti.map_index >= 0 for ti in proxies)  # one mapped task per proxy
    again = json.loads(toy.path("data/mixture/mixture.json").read_text())
    _check(again)
    # Same functions, same seeds: the DAG measures what the pool measured.
    for a, b in zip(doc["candidates"], again["candidates"]):
        assert a["weights"] == pytest.approx(b["weights"])
        assert a["bpb_mean"] == pytest.approx(b["bpb_mean"], rel=1e-4)


def test_predictors_rank_a_known_mixing_law_and_final_rules():
    """On scores that follow a data-mixing law exactly, every predictor ranks held-out candidates
    nearly right; the final rules pick the best / the top-k mean as documented."""
    import numpy as np

    names = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    t = np.array([-1.0, 0.5, 1.5])

    def cand(j, w):
        return {"name": f"c{j}", "round": 0, "weights": dict(zip(names, w)), "bpb_mean": float(3 + np.exp(w @ t))}

    W = rng.dirichlet(np.ones(3), size=36)
    train, test = [cand(j, w) for j, w in enumerate(W[:24])], [cand(j, w) for j, w in enumerate(W[24:])]
    rho = search.holdout_spearman(train, test, names)
    assert set(rho) == {"lightgbm", "linear_regmix", "mixing_law"}
    assert rho["mixing_law"]["spearman"] > 0.95 and rho["linear_regmix"]["spearman"] > 0.8
    assert rho["lightgbm"]["spearman"] > 0.6
    cfg = {"final": {"method": "best", "k": 2}, "seed": 0, "local_concentration": 20.0, "pool_samples": 100}
    best = min(train, key=lambda c: c["bpb_mean"])
    assert search.final_weights(cfg, train, names, None) == pytest.approx(best["weights"])
    top2 = sorted(train, key=lambda c: c["bpb_mean"])[:2]
    cfg["final"]["method"] = "top_k_mean"
    assert search.final_weights(cfg, train, names, None) == pytest.approx(
        {d: (top2[0]["weights"][d] + top2[1]["weights"][d]) / 2 for d in names})
    with pytest.raises(ValueError, match="mixture.final"):
        search.config({"mixture": {"final": {"method": "oracle"}}, "mix": {}})
