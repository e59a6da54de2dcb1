"""The ranks of tests/test_distributed.py: scenarios of collectives over gloo, one
``track()`` region each, on CPU tensors standing for device memory (virtual streams).

Started by ``torch.multiprocessing.spawn`` (:func:`spawn_entry`), each rank writes
``OUT/rank<R>/scenarios.json`` ({scenario: {"hazards": [...], "seen": {...}, "unseen":
{...}, "diagnostics": [...]}}); under ``torchrun`` it then runs the README's example, whose
hazards make the rank's report (``esper-lifetimes run --report``) for the merge. The lines
the tests expect in reports carry a ``# L:name`` marker.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from typing import Any

import torch
import torch.distributed as dist


def _result(tr: Any) -> dict[str, Any]:
    from esper_lifetimes import distributed, reports

    return {
        "hazards": [reports.hazard_dict(h) for h in tr.hazards],
        "seen": distributed.seen(tr),
        "unseen": distributed.unseen(tr),
        "tracker_unseen": tr.unseen,
        "report": tr.report(),
        "pending": distributed.pending(tr),
        "diagnostics": tr.diagnostics,
    }


def read_before_wait(rank: int) -> None:
    x = torch.full((256,), float(rank + 1))
    work = dist.all_reduce(x, async_op=True)  # L:early-coll
    y = x * 2  # L:read-early
    work.wait()
    del y


def read_after_wait(rank: int) -> None:
    x = torch.full((256,), float(rank + 1))
    work = dist.all_reduce(x, async_op=True)
    work.wait()
    y = x * 2
    assert float(y[0]) == 6.0  # (1 + 2) * 2: the collective ran


def input_overwritten(rank: int) -> None:
    grad = torch.ones(256)
    work = dist.all_reduce(grad, async_op=True)  # L:overwrite-coll
    grad.mul_(0.5)  # L:overwrite
    work.wait()


def sync_collectives(rank: int) -> None:
    x = torch.full((64,), float(rank))
    dist.all_reduce(x)
    out = torch.empty(128)
    dist.all_gather_into_tensor(out, x)
    part = torch.empty(64)
    dist.reduce_scatter_tensor(part, out)
    dist.broadcast(x, src=0)
    a2a = torch.empty(64)
    dist.all_to_all_single(a2a, x)
    chunks = [torch.empty(64) for _ in range(2)]
    dist.all_gather(chunks, x)
    (x + out.sum() + part.sum() + a2a.sum() + chunks[1].sum()).sum()


def free_under_side_stream(rank: int) -> None:
    from esper_lifetimes import virtual

    s = virtual.Stream(name="comm")
    buf = torch.ones(256)
    s.wait_stream(virtual.default_stream())
    with virtual.stream(s):
        work = dist.all_reduce(buf, async_op=True)  # L:side-coll
        work.wait()  # the side stream waits; the default stream never does
    # the free (deterministic: gloo's work object may still hold the tensor a moment)
    buf.untyped_storage().resize_(0)  # L:side-free
    nxt = torch.empty(256)  # L:side-next
    del nxt


def p2p(rank: int) -> None:
    peer = 1 - rank
    send = torch.full((32,), float(rank))
    recv = torch.empty(32)
    ops = [dist.P2POp(dist.isend, send, peer), dist.P2POp(dist.irecv, recv, peer)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    assert float(recv[0]) == float(peer)
    early = torch.empty(32)
    if rank == 0:
        dist.isend(send, 1).wait()
    else:
        w = dist.irecv(early, 0)  # L:p2p-recv
        early.sum()  # L:p2p-early
        w.wait()


def functional(rank: int) -> None:
    import torch.distributed._functional_collectives as fc

    a = torch.ones(64)
    r = fc.all_reduce(a, "sum", dist.group.WORLD)  # L:fc-coll
    a.mul_(2)  # L:fc-overwrite
    v = fc.wait_tensor(r) + 1
    b = torch.ones(64)
    r2 = fc.all_reduce(b, "sum", dist.group.WORLD)
    r2 = r2 + 1  # the AsyncCollectiveTensor waits at its first use
    b.mul_(2)
    del v


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 4),
    )


def _sgd(model: torch.nn.Module, lr: float = 0.1) -> None:
    """The optimizer step, by hand (torch.optim's first step imports torch._dynamo: ~5 s
    of a test's budget)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)
            p.grad = None


def bucketed_allreduce(rank: int, device: str = "cpu") -> None:
    """Gradient buckets all-reduced while backward goes on (as DDP does), waited before
    the optimizer reads them: correct."""
    model = _model().to(device)
    params = [p for p in model.parameters()]
    buckets: list[list[torch.nn.Parameter]] = [params[4:], params[2:4], params[:2]]
    ready: dict[int, int] = {}
    inflight: list[tuple[Any, torch.Tensor, list[torch.nn.Parameter]]] = []

    def hook(p: torch.nn.Parameter) -> None:
        for i, b in enumerate(buckets):
            if any(p is q for q in b):
                ready[i] = ready.get(i, 0) + 1
                if ready[i] == len(b):
                    flat = torch.cat([q.grad.reshape(-1) for q in b])
                    inflight.append((dist.all_reduce(flat, async_op=True), flat, b))

    handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(rank)).to(device)
    for _ in range(2):
        ready.clear()
        model(x).square().mean().backward()
        for work, flat, b in inflight:
            work.wait()
            flat.div_(dist.get_world_size())
            off = 0
            for q in b:
                n = q.numel()
                q.grad.copy_(flat[off : off + n].view_as(q))
                off += n
        inflight.clear()
        _sgd(model)
    for h in handles:
        h.remove()


def ddp(rank: int) -> None:
    model = torch.nn.parallel.DistributedDataParallel(_model())
    model(torch.randn(4, 16)).sum().backward()  # L:ddp-backward


def ddp_comm_hook(rank: int) -> None:
    """DDP with torch's own allreduce communication hook: its collectives pass through
    Python (dist.all_reduce(..., async_op=True).get_future()) and are seen."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    model = torch.nn.parallel.DistributedDataParallel(_model())
    model.register_comm_hook(None, default_hooks.allreduce_hook)
    model(torch.randn(4, 16)).sum().backward()  # L:hook-backward
    g = model.module[0].weight.grad * 2
    del g


def fsdp2(rank: int) -> None:
    from torch.distributed.fsdp import fully_shard

    model = _model()
    for m in model:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m)
    fully_shard(model)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(rank))
    for _ in range(2):
        model(x).sum().backward()
        _sgd(model)


def emulated_read_before_wait(rank: int) -> None:
    """Unmodified CUDA code (emulated on the CPU) issuing from a side stream."""
    from esper_lifetimes.emulate import emulate_cuda

    with emulate_cuda():
        x = torch.ones(256, device="cuda")
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            work = dist.all_reduce(x, async_op=True)  # L:emu-coll
        y = x * 2  # L:emu-early
        work.wait()
        del y


def emulated_waited(rank: int) -> None:
    from esper_lifetimes.emulate import emulate_cuda

    with emulate_cuda():
        x = torch.ones(256, device="cuda")
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            work = dist.all_reduce(x, async_op=True)
        work.wait()  # the default stream waits on the collective
        y = x * 2
        assert float(y[0].cpu()) == 4.0


def emulated_bucketed_allreduce(rank: int) -> None:
    """The bucketed overlap, in unmodified CUDA code (emulated): clean."""
    from esper_lifetimes.emulate import emulate_cuda

    with emulate_cuda():
        bucketed_allreduce(rank, "cuda")


def future_and_polling(rank: int) -> None:
    """Waiting through the work's future, or polling is_completed(): both order the read."""
    x = torch.ones(64)
    fut = dist.all_reduce(x, async_op=True).get_future()
    fut.wait()
    a = x * 2
    y = torch.ones(64)
    work = dist.all_reduce(y, async_op=True)
    while not work.is_completed():
        pass
    b = y * 2
    assert float(a[0]) == float(b[0]) == 4.0


def cuda_read_before_wait(rank: int) -> None:
    """Real CUDA tensors (NCCL): the read before wait(), then the fix."""
    x = torch.ones(1 << 16, device="cuda")
    work = dist.all_reduce(x, async_op=True)  # L:cuda-coll
    y = x * 2  # L:cuda-early
    work.wait()
    z = torch.ones(1 << 16, device="cuda")
    work = dist.all_reduce(z, async_op=True)
    work.wait()
    (z * 2).sum().item()
    del y


# run by tests/test_distributed.py: under mp.spawn (light), under torchrun (the rest)
SPAWNED = [
    read_before_wait,
    read_after_wait,
    input_overwritten,
    sync_collectives,
    emulated_read_before_wait,
    emulated_waited,
    emulated_bucketed_allreduce,
    future_and_polling,
    functional,  # emulation, functional collectives and DDP all import torch._dynamo:
    ddp,  # once per process
    ddp_comm_hook,
]
TORCHRUN = [free_under_side_stream, p2p, bucketed_allreduce, fsdp2]
SCENARIOS = {f.__name__: f for f in [*SPAWNED, *TORCHRUN, cuda_read_before_wait]}


def run_scenarios(rank: int, names: list[str], out: str) -> None:
    """Each scenario in its own ``track()`` region; results to OUT/rank<R>/scenarios.json."""
    import esper_lifetimes as el

    results: dict[str, Any] = {}
    for name in names:
        dist.barrier()
        t0 = time.perf_counter()
        with el.track(on_hazard="collect") as tr:
            SCENARIOS[name](rank)
        results[name] = _result(tr)
        results[name]["seconds"] = round(time.perf_counter() - t0, 3)
    rdir = os.path.join(out, f"rank{rank}")
    os.makedirs(rdir, exist_ok=True)
    with open(os.path.join(rdir, "scenarios.json"), "w") as f:
        json.dump(results, f, indent=1)


def spawn_entry(rank: int, world: int, port: int, out: str, names: list[str], backend: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)  # two ranks on a small machine
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        run_scenarios(rank, names, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    # torchrun --standalone --nproc-per-node 2 -m esper_lifetimes run --report REPORTS \
    #     tests/distributed_worker.py OUT: the TORCHRUN scenarios in their own regions, then
    #     the README's example (examples/allreduce_overlap.py) under the run's tracker:
    #     the rank's report. One process group for both (a default group initialized
    #     again after its destroy hangs under torchrun): the example's init and destroy
    #     are no-ops here.
    dist.init_process_group("gloo")
    try:
        run_scenarios(dist.get_rank(), [f.__name__ for f in TORCHRUN], sys.argv[1])
        dist.barrier()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        init, destroy = dist.init_process_group, dist.destroy_process_group
        dist.init_process_group = dist.destroy_process_group = lambda *a, **k: None
        try:
            runpy.run_path(
                os.path.join(root, "examples", "allreduce_overlap.py"), run_name="__main__"
            )
        finally:
            dist.init_process_group, dist.destroy_process_group = init, destroy
    finally:
        dist.destroy_process_group()
