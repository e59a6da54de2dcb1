"""A miniature of a vectorized multi-stream training step, checked by esper-lifetimes.

Several environments, each with its own stream, train on slices of one shared batch.
The batch is split and cloned on the default stream and handed to the env streams with
``record_stream`` and ``wait_stream``. A fused validation pass then builds, for each
environment, an override tensor on the default stream with ``torch.full``, fills it per
configuration, reads it on the environment's stream, and rebinds it for the next
environment, all before the ``synchronize`` that ends the pass.

The rebinding frees a block that the previous environment's stream may still be
reading: the allocator hands it to the next ``torch.full`` on the default stream, which
overwrites it. That is the real hazard (``unsynced-free``, then ``reuse-race``). The
hand-off of the cloned slices is safe. Two ``record_stream`` calls are redundant.

    python examples/vectorized_step.py            # the step as shipped, then corrected
    python examples/vectorized_step.py --buggy    # only the step as shipped
    python examples/vectorized_step.py --fixed    # only the corrected step
    esper-lifetimes demo                          # the step as shipped, its report

It runs on CUDA streams when a GPU is present and on esper_lifetimes' virtual streams
(CPU tensors standing for device memory) otherwise; ``--virtual`` forces the latter.
The exit status is 0 when the shipped step shows its hazards and the corrected one
comes out clean.

The code lives in the package (``esper_lifetimes.examples.vectorized_step``) so that
``esper-lifetimes demo`` runs it from an installed copy; ``examples/vectorized_step.py``
in the repository runs this module.
"""

from __future__ import annotations

import argparse
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch

import esper_lifetimes
from esper_lifetimes import virtual

N_ENVS = 3
WIDTH = 256
BATCH = 192
CONFIGS = ({"scale": 1.0, "k": 16}, {"scale": 0.5, "k": 64}, {"scale": 2.0, "k": 128})


# ---------------------------------------------------------------------------------------
# Streams: torch.cuda or esper_lifetimes.virtual, with one API


class Backend:
    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.device = "cuda" if cuda else "cpu"
        self.api: Any = torch.cuda if cuda else virtual

    def new_stream(self, name: str) -> Any:
        return torch.cuda.Stream() if self.cuda else virtual.Stream(name=name)

    def stream(self, s: Any) -> Any:
        return self.api.stream(s)

    def current_stream(self) -> Any:
        return self.api.current_stream()

    def synchronize(self) -> None:
        self.api.synchronize()

    def track(self, timeline: Any = None) -> esper_lifetimes.Tracker:
        cpu = "host" if self.cuda else "device"
        return esper_lifetimes.track("collect", cpu=cpu, timeline=timeline)


@dataclass
class Env:
    name: str
    stream: Any
    policy: torch.nn.Module
    opt: torch.optim.Optimizer


def make_envs(B: Backend) -> list[Env]:
    torch.manual_seed(0)
    envs = []
    for i in range(N_ENVS):
        policy = torch.nn.Sequential(
            torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh(), torch.nn.Linear(WIDTH, WIDTH)
        ).to(B.device)
        opt = torch.optim.SGD(policy.parameters(), lr=1e-3)
        envs.append(Env(f"env{i}", B.new_stream(f"env{i}"), policy, opt))
    return envs


# ---------------------------------------------------------------------------------------
# The step as shipped


def train_step(envs: list[Env], B: Backend) -> list[torch.Tensor]:
    """One optimisation step per environment on a slice of the shared batch. Returns the
    losses, allocated on the env streams (read on the default stream only after the
    synchronize that ends the validation pass)."""
    D = B.current_stream()
    batch = torch.randn(BATCH, WIDTH, device=B.device)  # the shared batch, on D
    for env in envs:
        batch.record_stream(env.stream)  # "to be safe": redundant, no env stream uses it
    losses = []
    for env, chunk in zip(envs, batch.chunk(len(envs)), strict=True):
        x = chunk.clone()  # split and cloned on D
        env.stream.wait_stream(D)  # the env stream's work is ordered after the clone
        x.record_stream(env.stream)  # x is freed below, before D joins: needed
        with B.stream(env.stream):
            loss = env.policy(x).pow(2).mean()
            loss.backward()
            env.opt.step()
            env.opt.zero_grad(set_to_none=True)
            loss.record_stream(env.stream)  # redundant: loss was allocated on this stream
        del x
        losses.append(loss)
    for env in envs:
        D.wait_stream(env.stream)  # the default stream joins every env stream
    return losses


def validation_pass(envs: list[Env], obs: torch.Tensor, B: Backend) -> list[torch.Tensor]:
    """Fused validation: every environment under its own configuration."""
    D = B.current_stream()
    scores = []
    with torch.no_grad():
        for env, cfg in zip(envs, CONFIGS, strict=True):
            # built on D; the assignment frees the previous environment's override
            override = torch.full(obs.shape, cfg["scale"], device=B.device)
            override[:, : cfg["k"]] = 0.0  # filled per configuration, on D
            env.stream.wait_stream(D)
            with B.stream(env.stream):
                scores.append(env.policy(obs * override).mean())  # read on the env stream
        del override
    B.synchronize()  # end of the pass: too late for the overrides rebound above
    return scores


# ---------------------------------------------------------------------------------------
# The step corrected


def train_step_fixed(envs: list[Env], B: Backend) -> list[torch.Tensor]:
    D = B.current_stream()
    batch = torch.randn(BATCH, WIDTH, device=B.device)
    losses = []
    for env, chunk in zip(envs, batch.chunk(len(envs)), strict=True):
        x = chunk.clone()
        env.stream.wait_stream(D)
        x.record_stream(env.stream)
        with B.stream(env.stream):
            loss = env.policy(x).pow(2).mean()
            loss.backward()
            env.opt.step()
            env.opt.zero_grad(set_to_none=True)
        del x
        losses.append(loss)
    for env in envs:
        D.wait_stream(env.stream)
    return losses


def validation_pass_fixed(envs: list[Env], obs: torch.Tensor, B: Backend) -> list[torch.Tensor]:
    D = B.current_stream()
    scores = []
    with torch.no_grad():
        for env, cfg in zip(envs, CONFIGS, strict=True):
            override = torch.full(obs.shape, cfg["scale"], device=B.device)
            override[:, : cfg["k"]] = 0.0
            env.stream.wait_stream(D)
            with B.stream(env.stream):
                scores.append(env.policy(obs * override).mean())
            override.record_stream(env.stream)  # the fix: free only after the env's read
        del override
    B.synchronize()
    return scores


# ---------------------------------------------------------------------------------------
# Running and explaining


def run(B: Backend, fixed: bool, timeline: Any = None) -> esper_lifetimes.Tracker:
    """Runs one step and its validation pass under a tracker; returns the tracker.
    ``timeline`` (an ``esper_lifetimes.reports.Timeline``) records its engine calls."""
    envs = make_envs(B)
    obs = torch.randn(64, WIDTH, device=B.device)
    step = train_step_fixed if fixed else train_step
    validate = validation_pass_fixed if fixed else validation_pass
    with B.track(timeline) as tracker:
        losses = step(envs, B)
        scores = validate(envs, obs, B)  # ends with a synchronize
        total = torch.stack(losses).sum().item()
        del losses
        summary = (total, [s.item() for s in scores])
    del summary
    return tracker


_HANDOFFS = (
    ("x.record_stream(env.stream)", "the cloned slices handed to the env streams"),
    ("D.wait_stream(env.stream)", "the default stream joining the env streams"),
)


def verdict(tracker: esper_lifetimes.Tracker, fixed: bool) -> list[str]:
    """What the report means, as lines: the real hazards, the redundant calls, and the
    hand-offs that were found safe."""
    errors, advice = tracker.errors, tracker.advice
    out = [f"Real hazards: {len(errors)}"]
    out += [f"  - {h.kind} at {h.use_site} (freed at {h.free_site})" for h in errors]
    out.append(f"Redundant record_stream calls: {len(advice)}")
    out += [f"  - {h.use_site}" for h in advice]
    named = {s for h in tracker.hazards for s in (h.use_site, h.other_site, h.free_site) if s}
    out.append("Safe:")
    step = train_step_fixed if fixed else train_step
    lines, first = inspect.getsourcelines(step)
    here = os.path.basename(__file__)
    for needle, what in _HANDOFFS:
        for i, line in enumerate(lines, first):
            if line.strip().startswith(needle):
                if not any(s.endswith(f"{here}:{i}") for s in named):
                    out.append(f"  - {what} ({here}:{i}): no hazard")
    if tracker.diagnostics:
        out.append(f"Diagnostics: {tracker.diagnostics}")
    return out


def as_expected(tracker: esper_lifetimes.Tracker, fixed: bool) -> bool:
    """The shipped step shows its hazard and its two redundant calls; the fixed one none."""
    if fixed:
        return not tracker.hazards
    kinds = {h.kind for h in tracker.errors}
    return "unsynced-free" in kinds and len(tracker.advice) == 2


def explain(tracker: esper_lifetimes.Tracker, title: str, fixed: bool) -> None:
    print(f"=== {title} ===")
    print(tracker.report())
    print()
    print("\n".join(verdict(tracker, fixed)))
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--buggy", action="store_true", help="only the step as shipped")
    ap.add_argument("--fixed", action="store_true", help="only the corrected step")
    ap.add_argument("--virtual", action="store_true", help="virtual streams even on a GPU")
    args = ap.parse_args(argv)
    B = Backend(cuda=torch.cuda.is_available() and not args.virtual)
    where = "CUDA streams" if B.cuda else "virtual streams (CPU)"
    ok = True
    if not args.fixed:
        t = run(B, fixed=False)
        explain(t, f"The step as shipped, on {where}", fixed=False)
        ok &= as_expected(t, fixed=False)
    if not args.buggy:
        t = run(B, fixed=True)
        explain(t, f"The corrected step, on {where}", fixed=True)
        print("clean." if not t.hazards else "NOT clean.")
        ok &= as_expected(t, fixed=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
