"""How the engine's processes agree: a Collective (data split, score averaging, agreement on
what to prune) and the seeded loader every collective builds. The single-process version
lives here; the Ray layer supplies a torch.distributed one with the same methods."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class Collective(Protocol):
    rank: int
    world_size: int

    def loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, pin_memory: bool = False
    ) -> DataLoader: ...
    def wrap(self, model: nn.Module) -> nn.Module: ...
    def unwrap(self, model: nn.Module) -> nn.Module: ...
    def mean_scores(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def check_agreement(self, fingerprint: str) -> None: ...
    def share(self, value: Any) -> Any: ...
    def broadcast_decision(self, decision: bool) -> bool: ...
    def mean_metrics(self, values: dict[str, float]) -> dict[str, float]: ...


def seeded_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    pin_memory: bool,
    rank: int,
    world_size: int,
) -> DataLoader:
    """This rank's share of ``dataset``. The order of epoch e depends only on (seed, e) (the
    engine calls ``sampler.set_epoch``): a resumed run sees the batches an uninterrupted one
    would, and one process sees what one Ray worker sees."""
    sampler: DistributedSampler[Any] = DistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)


class LocalCollective:
    """One process: nothing to agree on."""

    rank, world_size = 0, 1
    gossip_seconds, gossip_bytes = 0.0, 0  # what agreeing cost: nothing is exchanged

    def loader(self, dataset, batch_size, shuffle, seed, num_workers, pin_memory=False):
        return seeded_loader(dataset, batch_size, shuffle, seed, num_workers, pin_memory, rank=0, world_size=1)

    def wrap(self, model):
        return model

    def unwrap(self, model):
        return model

    def mean_scores(self, scores):
        return scores

    def check_agreement(self, fingerprint):
        return None

    def share(self, value):
        return value

    def broadcast_decision(self, decision):
        return decision

    def mean_metrics(self, values):
        return values

    def gather(self, value):
        return [value]
