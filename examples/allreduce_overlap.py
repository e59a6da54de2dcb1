"""Gradients all-reduced asynchronously while the step goes on, with two mistakes.

Run on two processes (gloo, CPU tensors; every rank tracked, one report each, merged):

    torchrun --standalone --nproc-per-node 2 -m esper_lifetimes run --fail-on never \\
        --report out/ examples/allreduce_overlap.py
    esper-lifetimes merge out/

Both ranks read the gradient (its norm, for clipping) before the all-reduce is waited on;
rank 1 also zeroes its loss statistics while their all-reduce still reads them.
"""

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)

model = torch.nn.Linear(64, 64)
loss = model(torch.randn(32, 64)).square().mean()
loss.backward()

grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
work = dist.all_reduce(grad, async_op=True)
norm = grad.norm()  # the all-reduce is still writing grad: wait first
work.wait()

stats = torch.stack([loss.detach(), norm])
stats_work = dist.all_reduce(stats, async_op=True)
if rank == 1:
    stats.zero_()  # the all-reduce still reads stats
stats_work.wait()

dist.destroy_process_group()
