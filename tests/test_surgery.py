"""Surgery keeps optimizer state warm, composes across iterative prunes, and round-trips."""

from __future__ import annotations

import copy

import pytest
import torch

import pat_ray
from _helpers import randomize_norms
from pat_ray.core.architecture import Architecture
from pat_ray.core.cost.flops import measure_cost
from pat_ray.errors import CheckpointError
from pat_ray.models.cifar_resnet import CifarResNet
from pat_ray.tracer.trace import trace_channel_groups
from pat_ray.training.checkpoint import load_checkpoint, save_checkpoint


def trained_step(optimizer_cls, **kw):
    torch.manual_seed(0)
    model = CifarResNet(20, num_classes=4)
    optimizer = optimizer_cls(model.parameters(), lr=0.1, **kw)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 4, (4,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return model, optimizer, x


@pytest.mark.parametrize(
    "optimizer_cls, kw, keys",
    [
        (torch.optim.SGD, {"momentum": 0.9}, ["momentum_buffer"]),
        (torch.optim.Adam, {}, ["exp_avg", "exp_avg_sq"]),
    ],
)
def test_optimizer_state_of_kept_channels_is_their_old_slice(optimizer_cls, kw, keys):
    model, optimizer, x = trained_step(optimizer_cls, **kw)
    conv = model.layer1[0].conv1
    old = {k: optimizer.state[conv.weight][k].clone() for k in keys}
    arch = pat_ray.prune(model, x, budget=0.5, optimizer=optimizer)
    kept_out = torch.tensor(arch.kept["layer1.0.conv1"])
    kept_in = torch.tensor(arch.kept["conv1"])  # the residual stream feeding the block
    assert len(kept_out) < 16 and len(kept_in) < 16
    for key in keys:
        assert torch.equal(optimizer.state[conv.weight][key], old[key][kept_out][:, kept_in])
    # and training goes on with the same optimizer object
    torch.nn.functional.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    optimizer.step()


def test_surgery_keeps_a_channels_last_model_and_its_momentum_channels_last():
    model, optimizer, x = trained_step(torch.optim.SGD, momentum=0.9)
    model.to(memory_format=torch.channels_last)
    for p in model.parameters():  # the momentum taken before the switch: make it match
        if p.dim() == 4:
            state = optimizer.state[p]
            state["momentum_buffer"] = state["momentum_buffer"].contiguous(memory_format=torch.channels_last)
    pat_ray.prune(model, x, budget=0.5, optimizer=optimizer)
    shrunk = [p for p in model.parameters() if p.dim() == 4 and p.shape[2] > 1]  # 3x3: layout is unambiguous
    assert any(p.shape[0] < 16 for p in shrunk)
    for p in shrunk:
        assert p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        assert optimizer.state[p]["momentum_buffer"].stride() == p.stride()


def test_iterative_pruning_composes_to_a_base_architecture(tmp_path):
    torch.manual_seed(0)
    model, x = CifarResNet(20, num_classes=4), torch.randn(2, 3, 16, 16)
    randomize_norms(model)
    base_sizes = {g.name: g.size for g in trace_channel_groups(model, x).prunable}
    first = pat_ray.prune(model, x, budget=0.7)
    second = pat_ray.prune(model, x, budget=0.7)  # 70% of what is left
    total = first.compose(second)
    assert dict(total.sizes) == base_sizes
    model.eval()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, "cifar_resnet20", total, (1, 3, 16, 16), {"num_classes": 4}, {"epoch": 3})
    loaded, ckpt = load_checkpoint(path)
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert ckpt.extra == {"epoch": 3}
    assert measure_cost(loaded, x) == measure_cost(model, x)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model, x = CifarResNet(20), torch.randn(1, 3, 16, 16)
    arch = pat_ray.prune(model, x, budget=0.5)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, "cifar_resnet20", arch, (1, 3, 16, 16))
    before = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, "cifar_resnet20", arch, (1, 3, 16, 16))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_bad_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt.*does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pat_ray checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_architecture_json_and_fingerprint():
    arch = Architecture({"a": (0, 2), "b": (1,)}, {"a": 3, "b": 2})
    assert Architecture.from_json(arch.to_json()) == arch
    assert arch.counts == (2, 1)
    other = Architecture({"a": (0, 1), "b": (1,)}, {"a": 3, "b": 2})
    assert arch.fingerprint() != other.fingerprint()
    with pytest.raises(ValueError, match="lose all"):
        Architecture({"a": ()}, {"a": 3})


def test_taylor_needs_gradients_and_ranks_by_them():
    torch.manual_seed(0)
    model, x = CifarResNet(20, num_classes=4), torch.randn(4, 3, 16, 16)
    with pytest.raises(ValueError, match="needs gradients"):
        pat_ray.prune(copy.deepcopy(model), x, criterion="taylor")
    batches = [(x, torch.randint(0, 4, (4,))) for _ in range(2)]
    arch = pat_ray.prune(model, x, criterion="taylor", budget=0.5, calibration=batches)
    assert sum(arch.counts) < sum(arch.sizes.values())
    assert all(p.grad is None for p in model.parameters())


def test_bn_scale_prefers_large_gammas():
    model, x = CifarResNet(20, num_classes=4), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        model.layer1[0].bn1.weight.copy_(torch.arange(16.0))
    arch = pat_ray.prune(model, x, criterion="bn_scale", budget=0.5, measure="channels")
    assert arch.kept["layer1.0.conv1"] == tuple(range(16 - len(arch.kept["layer1.0.conv1"]), 16))
