"""Multi-process training on CPU (gloo): DDP and FSDP2 ranks reproduce the single-process run.

2 ranks x micro_batch m must give the loss curve of 1 process x micro_batch 2m on the
same data (same sequences per step, gradients averaged over ranks), through the real
`torchrun` launch the stage does; an FSDP2 run interrupted and resumed lands on the
same curve (its sharded optimizer state goes through the full-state checkpoint), and its anneal
from that checkpoint matches the single-process anneal.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.fixtures.training import built_inputs, read_curve, tiny_params  # noqa: F401  (built_inputs is a fixture)

STEPS = 8  # + 2 anneal steps (anneal_fraction 0.2)
# Runs under torchrun: train_phase stopped after 2 steps (as if killed), the checkpoint read back, then resumed.
FSDP_JOB = """
import json, sys, torch, yaml
from pipelines.train.loop import train_phase
params = yaml.safe_load(open(sys.argv[1]))
torch.distributed.init_process_group("gloo")  # one group for both calls (train_phase then leaves it open)
train_phase(params, "phase1", stop_after=2)
state = torch.load("models/phase1/trainer_state.pt", weights_only=True)
if torch.distributed.get_rank() == 0:
    from pathlib import Path
    Path("stopped.json").write_text(json.dumps({
        "step": state["step"], "world_size": state["world_size"], "had_curve": Path("metrics/train_phase1.csv").exists(),
        "optimizer_keys": sorted(state["optimizer"]["state"]),
        "n_params": sum(len(g["params"]) for g in state["optimizer"]["param_groups"])}))
torch.distributed.barrier()  # rank 0 has read the stopped state before the run goes on
train_phase(params, "phase1")
train_phase(params, "phase2")  # the anneal starts from the FSDP-written phase-1 checkpoint
torch.distributed.destroy_process_group()
"""


@pytest.fixture
def ws(workspace, built_inputs):  # noqa: F811
    shutil.copytree(built_inputs[0] / "data", workspace.path("data"))
    return workspace


def _fresh(ws) -> None:
    for d in ("models", "metrics"):
        shutil.rmtree(ws.path(d), ignore_errors=True)


def _losses(ws, phase: str = "phase1") -> list[float]:
    return [r["loss"] for r in read_curve(ws.path(f"metrics/train_{phase}.csv"))]


def test_resolve_nproc_and_parallel_choice():
    from pipelines.train.distributed import World, choose_parallel, resolve_nproc

    assert resolve_nproc({"nproc": 3}) == 3 and resolve_nproc({}) == 1
    assert resolve_nproc({"nproc": "auto", "device": "cpu"}) == 1
    assert resolve_nproc({"nproc": "auto"}) == (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    with pytest.raises(ValueError, match="nproc"):
        resolve_nproc({"nproc": 0})
    two = World(rank=0, size=2)
    assert choose_parallel("auto", 10_000, World()) == "none"
    assert choose_parallel("auto", 10_000, two) == "ddp" and choose_parallel("auto", 10**9, two) == "fsdp"
    assert choose_parallel("fsdp", 10_000, two) == "fsdp"
    with pytest.raises(ValueError, match="parallel"):
        choose_parallel("tp", 10_000, two)


def test_ranks_split_each_step_like_one_bigger_micro_batch(ws):
    from pipelines.pack.format import PackedDataset
    from pipelines.train.data import BatchStream

    data = PackedDataset(ws.path("data/pack/phase1"))
    one = BatchStream(data, 4, seed=1, position=2)
    r0, r1 = BatchStream(data, 2, seed=1, position=2, rank=0, world=2), BatchStream(data, 2, seed=1, position=2, rank=1, world=2)
    for _ in range(3):
        big, a, b = one.next(), r0.next(), r1.next()
        assert torch.equal(big.input_ids, torch.cat([a.input_ids, b.input_ids]))
        assert r0.position == r1.position == one.position  # the position saved in checkpoints is global
    with pytest.raises(ValueError, match="rank"):
        BatchStream(data, 2, seed=1, rank=2, world=2)


@pytest.mark.slow
def test_ddp_and_fsdp_ranks_match_one_process_and_fsdp_resumes(ws):
    from pipelines.train.stage import run_phase1

    base = dict(phase1_steps=STEPS, warmup_steps=2, checkpoint_every=3, tensorboard=False)
    from pipelines.train.stage import run_anneal

    run_phase1(tiny_params(ws, micro_batch=4, **base))  # in this process
    single, single_json = _losses(ws), json.loads(ws.path("metrics/details/train_phase1.json").read_text())
    run_anneal(ws.params())
    single_anneal = _losses(ws, "phase2")
    assert len(single_anneal) == 2

    _fresh(ws)
    ddp = run_phase1(tiny_params(ws, micro_batch=2, nproc=2, parallel="ddp", **base))  # via torchrun
    assert ddp["world_size"] == 2 and ddp["tokens"] == single_json["tokens"]
    assert len(_losses(ws)) == STEPS
    assert _losses(ws) == pytest.approx(single, rel=1e-6), "DDP 2 x 2 must train like 1 x 4"
    state = torch.load(ws.path("models/phase1/trainer_state.pt"), weights_only=True)  # plain tensors only
    assert state["world_size"] == 2 and state["position"] == STEPS * 4

    # FSDP2 in one torchrun job: stopped after 2 steps (between checkpoints), then resumed to the end.
    _fresh(ws)
    tiny_params(ws, micro_batch=2, nproc=2, parallel="fsdp", **base)
    job = ws.path("fsdp_job.py")
    job.write_text(FSDP_JOB)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(job), str(ws.params_path)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    stopped = json.loads(ws.path("stopped.json").read_text())
    assert stopped["step"] == 2 and stopped["world_size"] == 2 and not stopped["had_curve"]
    assert stopped["optimizer_keys"] == list(range(stopped["n_params"]))  # index-keyed, like 1 process
    fsdp = json.loads(ws.path("metrics/details/train_phase1.json").read_text())
    assert fsdp["step_final"] == STEPS and fsdp["world_size"] == 2
    assert _losses(ws) == pytest.approx(single, rel=1e-6), "FSDP2 2 x 2, interrupted and resumed, must train like 1 x 4"
    assert _losses(ws, "phase2") == pytest.approx(single_anneal, rel=1e-6)
    # The FSDP checkpoint is a plain HF model directory: the single-process loader reads it.
    from pipelines.train.checkpoint import load_model

    assert sum(p.numel() for p in load_model(ws.path("models/phase1")).parameters()) == fsdp["parameters"]
