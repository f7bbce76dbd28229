"""Multi-process training: torchrun launch, DDP / FSDP2 wrapping, full-state checkpoints.

One process per GPU (or per CPU worker with gloo, which is how the tests run it).
Every rank reads the same packed data and takes its own slice of each optimizer
step's global batch (see BatchStream), so W ranks x micro_batch m see exactly the
sequences 1 process x micro_batch W*m sees. Rank 0 alone writes checkpoints and
metrics; checkpoints hold full (unsharded) tensors in the single-process format,
so any world size, or a plain `from_pretrained`, can load them.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
PARALLEL = ("auto", "ddp", "fsdp")
FSDP_AUTO_MIN_PARAMS = 500_000_000  # `auto` shards (FSDP2) the presets whose AdamW state crowds one GPU (1b)


def launched() -> bool:
    """True inside a torchrun worker of a multi-process job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_nproc(tp: dict) -> int:
    """`train.nproc`: an int, or `auto` = the number of visible GPUs on CUDA, 1 on CPU."""
    value = tp.get("nproc", 1)
    if value in (None, "auto"):
        device = tp.get("device", "auto")
        use_cuda = torch.cuda.is_available() and device in (None, "auto", "cuda")
        return torch.cuda.device_count() if use_cuda else 1
    n = int(value)
    if n < 1:
        raise ValueError(f"train.nproc must be >= 1 or 'auto', got {value!r}")
    return n


def launch(command: str, params: dict, nproc: int, metrics_path: Path) -> dict:
    """Run `python -m pipelines <command>` as `torchrun --nproc-per-node N` and return rank 0's metrics.

    The workers get exactly ``params`` (written to a temp YAML), not whatever params.yaml holds now.
    """
    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="train-params-", delete=False) as f:
        yaml.safe_dump(params, f, sort_keys=False)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc), "-m", "pipelines", "--params", f.name, command]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, int(params["train"].get("threads", 1)))))
    log.info("launching %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, env=env)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun {command} with {nproc} processes failed (exit {proc.returncode})")
    return json.loads(Path(metrics_path).read_text())


@dataclass
class World:
    rank: int = 0
    size: int = 1
    owns_group: bool = False  # this process group was started here (and is torn down here)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> World:
    """Join the torchrun job (gloo on CPU, nccl on CUDA); a single process gets World()."""
    if not launched():
        return World()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), owns)


def shutdown(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def all_sum(values: list[float] | torch.Tensor, world: World, device: torch.device) -> torch.Tensor:
    """Element-wise sum over ranks (float64). One process: no collective, and host numbers stay on the host
    (no GPU round trip before the forward is queued)."""
    if isinstance(values, torch.Tensor):
        t = values.detach().reshape(-1).to(device, torch.float64)
    else:
        t = torch.tensor(values, dtype=torch.float64, device=device if world.size > 1 else "cpu")
    if world.size > 1:
        dist.all_reduce(t)
    return t


def choose_parallel(name: str | None, n_params: int, world: World) -> str:
    """`train.parallel`: none for one process; `auto` = FSDP2 for the big presets, else DDP."""
    if name not in (*PARALLEL, None):
        raise ValueError(f"train.parallel must be one of {PARALLEL}, got {name!r}")
    if world.size == 1:
        return "none"
    if name in (None, "auto"):
        return "fsdp" if n_params >= FSDP_AUTO_MIN_PARAMS else "ddp"
    return name


def parallelize(model, name: str | None, device: torch.device, world: World):
    """(mode, module to call forward on) for this world and `train.parallel` ``name``: none, ddp or fsdp."""
    mode = choose_parallel(name, sum(p.numel() for p in model.parameters()), world)
    if mode != "none":
        log.info("rank %d/%d: %s", world.rank, world.size, mode)
    return mode, wrap(model, mode, device)


def wrap(model, mode: str, device: torch.device):
    """The module the loop calls forward on. DDP wraps; FSDP2 shards ``model`` in place (per decoder layer)."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    return model


def grad_sync(forward, mode: str, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an optimizer step."""
    if mode == "ddp" and not last:
        return forward.no_sync()
    if mode == "fsdp":
        forward.set_requires_gradient_sync(last)
    return nullcontext()


def as_float(x) -> float:
    from torch.distributed.tensor import DTensor

    return float(x.full_tensor() if isinstance(x, DTensor) else x)


# ---------------------------------------------------------------- full-state checkpoints (FSDP2)
# Plain and DDP models already hold full tensors; FSDP2 holds DTensor shards, gathered here
# (collectives: every rank calls these). The optimizer state is kept in torch's index-keyed
# format, so a checkpoint does not depend on how it was trained.

def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model) -> dict:
    """An FSDP2-sharded model's full state dict, gathered from every rank (meaningful on rank 0 only)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def optimizer_state(model, optimizer, mode: str) -> dict:
    """Index-keyed full optimizer state (for FSDP2, meaningful on rank 0 only)."""
    if mode != "fsdp":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not full:  # ranks other than 0
        return {}
    order = [fqn for group in full["param_groups"] for fqn in group["params"]]
    index = {fqn: i for i, fqn in enumerate(order)}
    return {"state": {index[k]: v for k, v in full["state"].items()},
            "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in full["param_groups"]]}


def load_optimizer_state(model, optimizer, state: dict, mode: str) -> None:
    if mode != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    # The FQN order of the optimizer's params, from a template of its own state dict.
    template = get_optimizer_state_dict(model, optimizer, options=_options())
    order = [fqn for group in template["param_groups"] for fqn in group["params"]]
    full = {"state": {order[int(i)]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, full, options=_options())


def plain_copy(model, state: dict):
    """A plain (unsharded) CPU copy of ``model`` holding ``state``, to save_pretrained from."""
    from transformers import LlamaForCausalLM

    plain = LlamaForCausalLM._from_config(model.config, attn_implementation="sdpa")
    plain.load_state_dict({k: v.to("cpu", torch.float32) for k, v in state.items()})
    return plain
