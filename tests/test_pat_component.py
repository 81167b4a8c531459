"""``pat_ray.PaT`` in loops of the user's own: the same trigger and architecture as ``pat_ray.run``,
any loss, optimizer, scheduler and precision, a resume from its state dict, and agreement
between the ranks of a torch.distributed job."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import pat_ray
from _helpers import configured
from pat_ray.training.collective import seeded_loader
from pat_ray.training.schedule import lr_multiplier
from pat_ray.training.setup import build_run, make_optimizer

EPOCHS = 6


def digits_config(tmp_path):
    return configured(
        output_dir=tmp_path,
        training={"epochs": EPOCHS},
        start={"kind": "epi", "snapshot_every": 0.25, "window": 3, "patience": 2, "tau": 0.97},
        tracking={"mlflow": False},
    )


def hand_written_loop(config) -> pat_ray.PaT:
    """The engine's recipe written out as a user would: the same data order, model, optimizer and schedule."""
    setup = build_run(config)
    model, optimizer = setup.model, make_optimizer(config, setup.model)
    train = seeded_loader(setup.data.train, config.data.batch_size, True, config.training.seed, 0, False, 0, 1)
    pruning = config.pruning
    pat = pat_ray.PaT(
        model,
        setup.example,
        optimizer,
        epochs=EPOCHS,
        budget=pruning.budget.fraction,
        start=config.start,
        steps=pruning.steps,
        interval=pruning.interval,
        iterations_per_epoch=len(train),
    )
    model = pat.begin(model)
    schedule, lr = config.training.schedule, config.training.optimizer.lr
    for epoch in range(1, EPOCHS + 1):
        train.sampler.set_epoch(epoch)
        model.train()
        for images, labels in train:
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_multiplier(schedule, pat.iteration, len(train), EPOCHS)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model = pat.step(model)
        model = pat.end_epoch(model)
    return pat


def test_a_hand_written_loop_and_pat_ray_run_start_and_prune_alike(tmp_path):
    config = digits_config(tmp_path)
    result = pat_ray.run(config, local=True, quiet=True)
    pat = hand_written_loop(config)
    assert result.trigger_position is not None and result.started_by == "policy"
    assert pat.trigger_position == pytest.approx(result.trigger_position) and pat.started_by == "policy"
    assert pat.architecture.fingerprint() == result.history[-1].fingerprint
    assert pat.pruned and pat.flops_kept == pytest.approx(result.flops_kept)
    assert [s.epi for s in pat.history] == [p.epi for r in result.history for p in r.snapshots]


class TinySegmenter(nn.Module):
    """Per-pixel logits: not a classifier, as the component must not assume one."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
            nn.Conv2d(24, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        )  # fmt: skip
        self.out = nn.Conv2d(24, 2, 1)

    def forward(self, x):
        return self.out(self.body(x))


def segmentation_batches(count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, 16, 16, generator=generator)
    masks = (images[:, 0] > 0).long()  # a mask the first channel gives away
    return [(images[i : i + 8], masks[i : i + 8]) for i in range(0, count, 8)]


def train_segmenter(pat, model, optimizer, scheduler, batches, epochs, first_epoch=1, stop_after=None):
    for epoch in range(first_epoch, epochs + 1):
        for images, masks in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), masks) + 0.1 * logits.float().softmax(1)[:, 1].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            model = pat.step(model)
        model = pat.end_epoch(model)
        if epoch == stop_after:
            break
    return model


def segmenter_run(epochs: int = 6):
    torch.manual_seed(0)
    model = TinySegmenter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = segmentation_batches(64)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * len(batches))
    pat = pat_ray.PaT(
        model, torch.zeros(1, 3, 16, 16), optimizer, epochs=epochs, budget=0.4,
        start={"kind": "epi", "snapshot_every": 0.5, "window": 2, "patience": 1, "tau": 0.9}, steps=2, interval=2,
    )  # fmt: skip
    return model, optimizer, scheduler, batches, pat


def test_any_loss_optimizer_scheduler_and_precision_reach_the_budget():
    model, optimizer, scheduler, batches, pat = segmenter_run()
    model = train_segmenter(pat, model, optimizer, scheduler, batches, epochs=6)
    assert pat.pruned and pat.trigger_epoch is not None and pat.flops_kept <= 0.4 + pat_ray.BUDGET_TOLERANCE
    assert model.out.in_channels < 24 and pat.iterations_per_epoch == len(batches)  # counted in the first epoch
    for group in optimizer.param_groups:  # the optimizer trains the smaller parameters, its moments sliced
        for param in group["params"]:
            assert optimizer.state[param]["exp_avg"].shape == param.shape
            assert any(param is p for p in model.parameters())
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 2, 16, 16)


def test_a_loop_resumed_from_the_state_dicts_ends_as_an_uninterrupted_one():
    model, optimizer, scheduler, batches, pat = segmenter_run()
    whole = train_segmenter(pat, model, optimizer, scheduler, batches, epochs=6)
    uninterrupted = pat.architecture.fingerprint()
    model, optimizer, scheduler, batches, pat = segmenter_run()
    model = train_segmenter(pat, model, optimizer, scheduler, batches, epochs=6, stop_after=4)
    saved = copy.deepcopy(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "pat": pat.state_dict()}
    )  # fmt: skip
    assert pat.trigger_epoch is not None and pat.trigger_epoch <= 4  # the cut falls after pruning started
    model, optimizer, scheduler, batches, pat = segmenter_run()  # a fresh, dense model: a new process
    model = pat.load_state_dict(saved["pat"])
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    resumed = train_segmenter(pat, model, optimizer, scheduler, batches, epochs=6, first_epoch=5)
    assert pat.architecture.fingerprint() == uninterrupted and pat.pruned
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def _rank(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = TinySegmenter()
    model = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = segmentation_batches(64, seed=rank)  # each rank its own data: scores differ, agreement must not
    start = {"kind": "fixed", "epoch": 1}
    pat = pat_ray.PaT(model, torch.zeros(1, 3, 16, 16), optimizer, epochs=4, start=start, steps=2, interval=2)
    for _ in range(4):
        for images, masks in batches:
            loss = F.cross_entropy(model(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model = pat.step(model)
        model = pat.end_epoch(model)
    queue.put((rank, pat.architecture.fingerprint(), isinstance(model, nn.parallel.DistributedDataParallel),
               pat.pruned, float(next(model.parameters()).sum())))  # fmt: skip
    torch.distributed.destroy_process_group()


def test_the_ranks_of_a_distributed_job_agree_and_train_on_through_a_rebuilt_ddp():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_rank, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = sorted(queue.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert [r[0] for r in results] == [0, 1]
    assert results[0][1] == results[1][1]  # one architecture for every rank
    assert all(r[2] and r[3] for r in results)  # still DDP, and pruned
    assert results[0][4] == pytest.approx(results[1][4])  # DDP kept the ranks' weights in step after pruning


def test_a_single_rank_trains_its_model_without_a_ddp_wrapper(tmp_path):
    """A one-worker Ray run is a torch.distributed job of one rank: DDP would all-reduce its
    gradients with itself and broadcast its buffers every step, for nothing."""
    from pat_ray.training.torch_collective import DistributedCollective

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = TinySegmenter()
        assert DistributedCollective(torch.device("cpu")).wrap(model) is model
    finally:
        torch.distributed.destroy_process_group()
