"""The torch.distributed Collective: DDP, sharded loaders and the "EPI gossip".

Every rank must prune the identical channels at the identical iteration or DDP breaks.
Per snapshot: scores are all-reduced (mean), every rank derives the architecture itself,
the fingerprints are all-gathered and compared (a mismatch stops the run), and rank 0's
trigger decision is broadcast. The gossip runs on a gloo side group so it works when the
default group is NCCL. ``gossip_seconds`` / ``gossip_bytes`` accumulate its cost.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from pat_ray.training.collective import seeded_loader


class ArchitectureMismatchError(RuntimeError):
    """Ranks selected different architectures: pruning them would desynchronize DDP."""


class DistributedCollective:
    def __init__(self, device: torch.device) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = device
        side = dist.new_group(backend="gloo")  # every rank is a member, so never NON_GROUP_MEMBER
        assert isinstance(side, dist.ProcessGroup)
        self.side = side
        self.gossip_seconds = 0.0
        self.gossip_bytes = 0

    def loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, pin_memory: bool = False
    ) -> DataLoader:
        return seeded_loader(dataset, batch_size, shuffle, seed, num_workers, pin_memory, self.rank, self.world_size)

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP when there are gradients to average: one rank (a one-worker Ray run) trains the
        model as it is, without a gradient all-reduce and buffer broadcast per step."""
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    def mean_scores(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        names = sorted(scores)
        flat = torch.cat([scores[n].detach().double().cpu().reshape(-1) for n in names])
        dist.all_reduce(flat, group=self.side)
        flat /= self.world_size
        self.gossip_bytes += flat.numel() * flat.element_size()
        out, offset = {}, 0
        for n in names:
            size = scores[n].numel()
            out[n] = flat[offset : offset + size].reshape(scores[n].shape).float()
            offset += size
        self.gossip_seconds += time.perf_counter() - start
        return out

    def check_agreement(self, fingerprint: str) -> None:
        start = time.perf_counter()
        everyone: list[str | None] = [None] * self.world_size
        dist.all_gather_object(everyone, fingerprint, group=self.side)
        self.gossip_bytes += len(fingerprint) * self.world_size
        self.gossip_seconds += time.perf_counter() - start
        if len(set(everyone)) != 1:
            raise ArchitectureMismatchError(f"ranks selected different architectures: {dict(enumerate(everyone))}")

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, value, group=self.side)
        return everyone

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (what the others pass is ignored)."""
        start = time.perf_counter()
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.side)
        self.gossip_seconds += time.perf_counter() - start
        return box[0]

    def broadcast_decision(self, decision: bool) -> bool:
        return bool(self.share(decision))

    def mean_metrics(self, values: dict[str, float]) -> dict[str, float]:
        names = sorted(values)
        tensor = torch.tensor([values[n] for n in names], dtype=torch.float64)
        dist.all_reduce(tensor, group=self.side)
        return {n: float(v) / self.world_size for n, v in zip(names, tensor)}
