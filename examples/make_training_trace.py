"""Writes python/esper_lifetimes/data/training_step.jsonl, the trace `esper-lifetimes demo` replays.

The trace is what a tracker would record from one run of TRAIN_PY below (a multi-stream
training step with four environment streams and a fused validation pass) on a CUDA
device: every storage allocation and free, every kernel's reads and writes, every
record_stream, wait, event and synchronize, with the sites ("train.py:LINE") of TRAIN_PY.
Addresses come from a model of PyTorch's caching allocator (per-stream pools of 512-byte
rounded blocks; a free block goes back to its allocation stream's pool and the next
allocation of that size on that stream takes the lowest-addressed one).

What the replay should find:
- unsynced-free (x3) and reuse-race (x2): in validate(), each environment's `override`
  is allocated on the default stream, read on the environment stream, and freed when the
  next iteration rebinds it, before the end-of-pass synchronize. Two iterations later the
  default stream's pool hands its block to another override.
- redundant-record-stream (x1): batch.record_stream(default), the stream that allocated it.
Everything else (the cloned per-environment batch with record_stream and wait_stream,
forward/backward/optimizer per stream, the loss gather, the non-blocking copies) is
correctly synchronized and must not be reported.

Deterministic: running it twice writes the same bytes.
    python examples/make_training_trace.py [--output PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from esper_lifetimes.trace import TraceWriter

TRAIN_PY = """\
import torch

from model import Policy

N_ENVS, BATCH, OBS, HIDDEN = 4, 256, 128, 512


def setup():
    envs = [torch.cuda.Stream() for _ in range(N_ENVS)]
    models = [Policy(OBS, HIDDEN).cuda() for _ in range(N_ENVS)]
    optims = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in models]
    val_obs = torch.randn(N_ENVS, BATCH // N_ENVS, OBS, device="cuda")
    batch_cpu = torch.empty(BATCH, OBS).pin_memory()
    torch.cuda.synchronize()
    return envs, models, optims, val_obs, batch_cpu


def train_step(envs, models, optims, batch_cpu):
    default = torch.cuda.current_stream()
    batch = batch_cpu.to("cuda", non_blocking=True)
    batch.record_stream(default)
    chunks = batch.chunk(N_ENVS)
    losses = []
    for i, s in enumerate(envs):
        obs = chunks[i].clone()
        s.wait_stream(default)
        obs.record_stream(s)
        with torch.cuda.stream(s):
            loss = models[i](obs).square().mean()
            loss.backward()
            optims[i].step()
        losses.append(loss)
    del obs
    for s in envs:
        default.wait_stream(s)
    total = torch.stack(losses).sum()
    total_cpu = total.to("cpu", non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return total_cpu, done, losses


def validate(envs, models, val_obs):
    default = torch.cuda.current_stream()
    outs = []
    for i, s in enumerate(envs):
        override = torch.empty_like(val_obs[i])
        override.fill_(0.5)
        s.wait_stream(default)
        with torch.cuda.stream(s):
            outs.append(models[i](val_obs[i], override))
    torch.cuda.synchronize()
    return torch.stack(outs).mean().item()


def main():
    envs, models, optims, val_obs, batch_cpu = setup()
    total_cpu, done, losses = train_step(envs, models, optims, batch_cpu)
    score = validate(envs, models, val_obs)
    done.synchronize()
    print(f"loss {total_cpu.item():.4f} val {score:.4f}")
    batch_cpu.copy_(torch.randn(BATCH, OBS))
    del losses


main()
"""

_LINES = TRAIN_PY.splitlines()


def site(code: str) -> str:
    """The site "train.py:LINE" of the one line of TRAIN_PY that contains ``code``."""
    found = [n for n, text in enumerate(_LINES, start=1) if code in text]
    if len(found) != 1:
        raise ValueError(f"{code!r} matches lines {found} of TRAIN_PY, expected one")
    return f"train.py:{found[0]}"


N_ENVS, BATCH, OBS, HIDDEN = 4, 256, 128, 512
F32 = 4

DEFAULT = 0  # torch.cuda.default_stream().cuda_stream
ENV_STREAMS = [0x55D0C3A1E0F0 + 0x2A0 * i for i in range(N_ENVS)]  # cudaStream_t values
DONE_EVENT = 0x55D0C3A7B410  # cudaEvent_t of `done`
WAIT_EVENT = 0x55D0C3A7B5C0  # the event torch records inside Stream.wait_stream (not traced)
PINNED_BATCH = 0x7F2A40000000  # batch_cpu, pinned host memory
PINNED_TOTAL = 0x7F2A40200000  # total_cpu, pinned host memory of the non-blocking copy


class CachingAllocator:
    """Enough of PyTorch's CUDA caching allocator to give realistic addresses.

    Per-stream pools; sizes rounded up to 512 bytes; a freed block goes back to its
    allocation stream's pool, and an allocation takes that pool's lowest-addressed free
    block of the same size before carving a new one.
    """

    def __init__(self, base: int = 0x7F4E20000000):
        self._next = base
        self._free: dict[tuple[int, int], list[int]] = {}  # (stream, size) -> free ptrs
        self._live: dict[int, tuple[int, int]] = {}  # ptr -> (stream, size)

    def alloc(self, nbytes: int, stream: int) -> int:
        size = -(-nbytes // 512) * 512
        pool = self._free.get((stream, size))
        if pool:
            ptr = min(pool)
            pool.remove(ptr)
        else:
            ptr = self._next
            self._next += size
        self._live[ptr] = (stream, size)
        return ptr

    def free(self, ptr: int) -> None:
        stream, size = self._live.pop(ptr)
        self._free.setdefault((stream, size), []).append(ptr)


class Recorder:
    """Writes the events of TRAIN_PY's run: storages are named, pointers are assigned."""

    def __init__(self, writer: TraceWriter):
        self.w = writer
        self.allocator = CachingAllocator()
        self.storages: dict[str, tuple[int, int]] = {}  # name -> (ptr, nbytes)

    def alloc(self, name: str, nbytes: int, stream: int, at: str) -> None:
        ptr = self.allocator.alloc(nbytes, stream)
        self.storages[name] = (ptr, nbytes)
        self.w.alloc(ptr, nbytes, stream, site(at))

    def free(self, name: str, at: str) -> None:
        ptr, _ = self.storages.pop(name)
        self.allocator.free(ptr)
        self.w.free(ptr, site(at))

    def read(self, name: str, stream: int, at: str, part: tuple[int, int] | None = None) -> None:
        self._access(name, stream, at, part, write=False)

    def write(self, name: str, stream: int, at: str, part: tuple[int, int] | None = None) -> None:
        self._access(name, stream, at, part, write=True)

    def _access(self, name, stream, at, part, write):
        ptr, nbytes = self.storages[name]
        if part is not None:  # (index, count): the index-th of count equal slices
            index, count = part
            nbytes //= count
            ptr += index * nbytes
        self.w.access(ptr, nbytes, stream, write, site(at))

    def record_stream(self, name: str, stream: int, at: str) -> None:
        self.w.record_stream(self.storages[name][0], stream, site(at))


def record(writer: TraceWriter) -> None:
    r = Recorder(writer)
    w = writer
    act = BATCH // N_ENVS * HIDDEN * F32  # one environment's hidden activations
    chunk = BATCH // N_ENVS * OBS * F32  # one environment's slice of the batch

    # --- setup(): streams, per-environment parameters, validation inputs -------------
    w.define_stream(DEFAULT, "default")
    for i, s in enumerate(ENV_STREAMS):
        w.define_stream(s, f"env{i}")
    for i in range(N_ENVS):
        r.alloc(f"W{i}", OBS * HIDDEN * F32, DEFAULT, "Policy(OBS, HIDDEN).cuda()")
        r.write(f"W{i}", DEFAULT, "Policy(OBS, HIDDEN).cuda()")
    r.alloc("val_obs", BATCH * OBS * F32, DEFAULT, "val_obs = torch.randn(")
    r.write("val_obs", DEFAULT, "val_obs = torch.randn(")
    w.device_synchronize()  # setup's torch.cuda.synchronize()

    # --- train_step() ------------------------------------------------------------------
    main_train = "= train_step(envs, models, optims, batch_cpu)"
    r.alloc("batch", BATCH * OBS * F32, DEFAULT, 'batch = batch_cpu.to("cuda"')
    w.copy_from_host(PINNED_BATCH, BATCH * OBS * F32, DEFAULT, site('batch = batch_cpu.to("cuda"'))
    r.write("batch", DEFAULT, 'batch = batch_cpu.to("cuda"')
    r.record_stream("batch", DEFAULT, "batch.record_stream(default)")  # the redundant one
    for i, s in enumerate(ENV_STREAMS):
        obs = f"obs{i}"
        # obs = chunks[i].clone(): allocated on the default stream (the current one),
        # then the previous iteration's obs dies (rebinding).
        r.alloc(obs, chunk, DEFAULT, "obs = chunks[i].clone()")
        r.read("batch", DEFAULT, "obs = chunks[i].clone()", part=(i, N_ENVS))
        r.write(obs, DEFAULT, "obs = chunks[i].clone()")
        if i:
            r.free(f"obs{i - 1}", "obs = chunks[i].clone()")
        w.stream_wait(s, DEFAULT)
        r.record_stream(obs, s, "obs.record_stream(s)")
        fwd = "loss = models[i](obs).square().mean()"
        r.alloc(f"h{i}", act, s, fwd)  # Linear output
        r.read(obs, s, fwd)
        r.read(f"W{i}", s, fwd)
        r.write(f"h{i}", s, fwd)
        r.alloc(f"sq{i}", act, s, fwd)  # .square()
        r.read(f"h{i}", s, fwd)
        r.write(f"sq{i}", s, fwd)
        r.alloc(f"loss{i}", F32, s, fwd)  # .mean()
        r.read(f"sq{i}", s, fwd)
        r.write(f"loss{i}", s, fwd)
        r.free(f"sq{i}", fwd)  # the temporary dies at the end of the statement
        bwd = "loss.backward()"
        r.alloc(f"G{i}", OBS * HIDDEN * F32, s, bwd)  # W.grad, created by the first backward
        r.read(f"loss{i}", s, bwd)
        r.read(f"h{i}", s, bwd)
        r.read(obs, s, bwd)
        r.write(f"G{i}", s, bwd)
        r.free(f"h{i}", bwd)  # saved activations released by autograd
        step = "optims[i].step()"
        r.read(f"G{i}", s, step)
        r.read(f"W{i}", s, step)
        r.write(f"W{i}", s, step)
    r.free(f"obs{N_ENVS - 1}", "del obs")
    for s in ENV_STREAMS:
        w.stream_wait(DEFAULT, s)
    gather = "total = torch.stack(losses).sum()"
    r.alloc("stacked", N_ENVS * F32, DEFAULT, gather)
    for i in range(N_ENVS):
        r.read(f"loss{i}", DEFAULT, gather)
    r.write("stacked", DEFAULT, gather)
    r.alloc("total", F32, DEFAULT, gather)
    r.read("stacked", DEFAULT, gather)
    r.write("total", DEFAULT, gather)
    r.free("stacked", gather)
    r.read("total", DEFAULT, 'total_cpu = total.to("cpu"')
    w.copy_to_host(PINNED_TOTAL, F32, DEFAULT, site('total_cpu = total.to("cpu"'))
    w.event_record(DONE_EVENT, DEFAULT)  # done.record()
    # Returning drops train_step's locals: batch (its chunks die with it) and total.
    r.free("batch", main_train)
    r.free("total", main_train)

    # --- validate() ---------------------------------------------------------------------
    main_val = "score = validate(envs, models, val_obs)"
    for i, s in enumerate(ENV_STREAMS):
        new = "override = torch.empty_like(val_obs[i])"
        r.alloc(f"override{i}", chunk, DEFAULT, new)
        if i:
            # The rebinding frees the previous environment's override while that
            # environment's stream may still be reading it: nothing orders the free
            # after the read (no record_stream, no wait, no sync yet).
            r.free(f"override{i - 1}", new)
        r.write(f"override{i}", DEFAULT, "override.fill_(0.5)")
        w.stream_wait(s, DEFAULT)
        val = "outs.append(models[i](val_obs[i], override))"
        r.alloc(f"out{i}", act, s, val)
        r.read("val_obs", s, val, part=(i, N_ENVS))
        r.read(f"override{i}", s, val)
        r.read(f"W{i}", s, val)
        r.write(f"out{i}", s, val)
    w.device_synchronize()  # torch.cuda.synchronize(), the end-of-pass sync
    score = "return torch.stack(outs).mean().item()"
    r.alloc("val_stacked", N_ENVS * act, DEFAULT, score)
    for i in range(N_ENVS):
        r.read(f"out{i}", DEFAULT, score)
    r.write("val_stacked", DEFAULT, score)
    r.alloc("val_mean", F32, DEFAULT, score)
    r.read("val_stacked", DEFAULT, score)
    r.write("val_mean", DEFAULT, score)
    r.free("val_stacked", score)
    r.read("val_mean", DEFAULT, score)  # .item(): a blocking read of the default stream
    w.stream_synchronize(DEFAULT)
    r.free("val_mean", score)
    # Returning drops validate's locals: the last override and the outputs.
    r.free(f"override{N_ENVS - 1}", main_val)
    for i in range(N_ENVS):
        r.free(f"out{i}", main_val)

    # --- main() after the step ------------------------------------------------------------
    w.event_synchronize(DONE_EVENT)  # done.synchronize()
    w.host_access(PINNED_TOTAL, F32, False, site("total_cpu.item()"))
    w.host_access(PINNED_BATCH, BATCH * OBS * F32, True, site("batch_cpu.copy_("))
    for i in range(N_ENVS):
        r.free(f"loss{i}", "del losses")


def main(argv: list[str] | None = None) -> None:
    default = (
        Path(__file__).resolve().parents[1] / "python/esper_lifetimes/data/training_step.jsonl"
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default, help=f"default: {default}")
    args = parser.parse_args(argv)
    metadata = {
        "description": "one multi-stream training step (4 environment streams) and a fused "
        "validation pass; sites refer to TRAIN_PY in examples/make_training_trace.py",
        "generator": "examples/make_training_trace.py",
    }
    with TraceWriter(args.output, metadata=metadata) as writer:
        record(writer)
    print(f"wrote {writer.events_written} events to {args.output}")


if __name__ == "__main__":
    main()
