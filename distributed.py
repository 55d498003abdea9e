"""Processes and seeds: training on one process or several (torchrun), and the batch each
process draws at each step.

Reference for train.py (App. C "Training Pipeline" trains on many GPUs; this file is what
lets the same recipe run on one CPU or under `torchrun --nproc_per_node=N train.py ...`).

Read first: train.py.
"""

import os
import random

import torch
import torch.distributed as dist


class Process:
    """This process's place among the training processes: rank and world size under torchrun
    (RANK, WORLD_SIZE in the environment), else one process alone.

    Every process builds the same tokenizers and model (same seed), draws its own batches
    (its rank is part of every batch's seed) and DDP averages the gradients, so the
    weights stay identical. gloo runs on CPUs, nccl between GPUs.
    """

    def __init__(self, device):
        self.enabled = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.device = device
        if self.enabled:
            if device == "cuda":
                local = int(os.environ.get("LOCAL_RANK", 0))
                torch.cuda.set_device(local)
                self.device = f"cuda:{local}"
            dist.init_process_group("nccl" if device == "cuda" else "gloo")

    @property
    def main(self):
        return self.rank == 0

    def wrap(self, module):
        """DistributedDataParallel averages gradients across processes after backward()."""
        if not self.enabled:
            return module
        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def close(self):
        if self.enabled:
            dist.destroy_process_group()


def say(process, *args):
    """print, on the main process only."""
    if process.main:
        print(*args, flush=True)


def step_rng(seed, rank, stage, step):
    """(random.Random, torch.Generator) for one step's batch, from (seed, rank, stage, step) alone.

    Drawing each batch from its own seed makes the data order a function of the step
    number: a run resumed at step s draws exactly the batches a straight run draws there.
    """
    rng = random.Random(f"{seed}/{rank}/{stage}/{step}")
    return rng, torch.Generator().manual_seed(rng.getrandbits(63))
