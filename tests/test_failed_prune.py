"""A prune that fails changes nothing: the model (its parameters, their data, its size
attributes), the optimizer (state and parameter groups), the caller's references and, for a PaT
step, the component's own record stay as they were before the call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pat_ray
from pat_ray.core.undo import undone_on_failure
from pat_ray.errors import PrunedModelError


class DeclaredWrongly(nn.Module):
    """A model whose prune fails its check: a plugin declares its gain layer wrongly (the gain
    "follows" the channels, but its forward writes the width 8 as a number), so the pruned model
    fails at that layer. (FocalNet's split sizes read from a pruned width once failed so; the
    tracer now keeps that width: ``tests/test_channel_slices.py``.)"""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.scale = WrittenWidthGain()
        self.proj = nn.Conv2d(8, 2 * 8 + 2, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.scale(self.stem(x))
        c = 8
        q, ctx, gates = torch.split(self.proj(h), (c, c, 2), 1)
        return self.head((q * ctx * gates.sum(1, keepdim=True)).mean((2, 3)))


class WrittenWidthGain(nn.Module):
    """A per-channel gain whose forward writes its width as a number: no rule could prune it."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, 8, 1, 1)


class WronglyDeclared:
    @pat_ray.hookimpl
    def pat_ray_register_layers(self, register):
        register("written_width_gain", pat_ray.LayerRule(WrittenWidthGain, maps="follows", params={"gain": {"out": 0}}))


@pytest.fixture(autouse=True)
def wrong_rule(plugins):
    plugins(WronglyDeclared(), name="wrongly_declared")


def trained(model: nn.Module, x: torch.Tensor) -> torch.optim.Optimizer:
    """One SGD step with momentum, so the optimizer holds state to slice."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    optimizer.step()
    return optimizer


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "parameters": [(name, p, p.data.clone()) for name, p in model.named_parameters()],
        "sizes": [(m, dict(vars(m))) for m in model.modules()],
        "state": {p: {k: (v, v.clone()) for k, v in s.items()} for p, s in optimizer.state.items()},
        "groups": [list(g["params"]) for g in optimizer.param_groups],
    }


def assert_unchanged(model: nn.Module, optimizer: torch.optim.Optimizer, before: dict, x: torch.Tensor, out) -> None:
    after = list(model.named_parameters())
    assert [(n, id(p)) for n, p, _ in before["parameters"]] == [(n, id(p)) for n, p in after]  # the same objects
    for (_, _, data), (_, now) in zip(before["parameters"], after, strict=True):
        assert torch.equal(now.data, data) and now.data.shape == data.shape
    for module, attributes in before["sizes"]:
        assert {k: v for k, v in vars(module).items() if not k.startswith("_")} == {
            k: v for k, v in attributes.items() if not k.startswith("_")
        }
    assert [list(g["params"]) for g in optimizer.param_groups] == before["groups"]
    assert set(optimizer.state) == set(before["state"])
    for parameter, state in before["state"].items():
        for key, (tensor, values) in state.items():
            assert optimizer.state[parameter][key] is tensor and torch.equal(tensor, values)
    torch.testing.assert_close(model(x), out)  # it still runs, and computes what it did


def test_a_one_shot_prune_that_fails_its_check_leaves_model_and_optimizer_as_they_were():
    torch.manual_seed(0)
    model, x = DeclaredWrongly(), torch.randn(2, 3, 8, 8)
    optimizer = trained(model, x)
    before, out = snapshot(model, optimizer), model(x).detach()
    with pytest.raises(PrunedModelError, match="scale"):
        pat_ray.prune(model, x, budget=0.5, optimizer=optimizer)
    assert_unchanged(model, optimizer, before, x, out)
    optimizer.step()  # and the optimizer still steps the model's own parameters


def test_a_pat_step_that_fails_leaves_the_model_optimizer_and_component_as_they_were():
    torch.manual_seed(0)
    model, x = DeclaredWrongly(), torch.randn(2, 3, 8, 8)
    optimizer = trained(model, x)
    pat = pat_ray.PaT(
        model,
        x[:1],
        optimizer,
        epochs=2,
        start={"kind": "fixed", "epoch": 0},
        steps=1,
        interval=1,
        iterations_per_epoch=2,
    )
    before, out = snapshot(model, optimizer), model(x).detach()
    with pytest.raises(PrunedModelError):
        pat.begin(model)  # a start at epoch 0 prunes here
    assert_unchanged(model, optimizer, before, x, out)
    assert not pat.pruned and pat.flops_kept == 1.0


def test_the_undo_restores_what_a_backend_changed_before_it_raised():
    """Whatever a surgery backend (a plugin's) did before raising: new parameters, data swapped
    under an existing parameter, a size attribute, a removed submodule, optimizer state."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    optimizer = trained(model, torch.randn(2, 3, 4, 4))
    conv, norm = model[0], model[1]
    weight, bias, momentum = conv.weight, conv.bias, optimizer.state[conv.weight]["momentum_buffer"]
    with pytest.raises(RuntimeError, match="half-way"), undone_on_failure(model, optimizer):
        conv.weight = nn.Parameter(weight[:2].detach().clone())
        bias.data = bias.data[:2]
        conv.out_channels = 2
        norm.running_mean = norm.running_mean[:2]
        del model[2]
        optimizer.state.pop(weight)
        optimizer.param_groups[0]["params"] = [conv.weight]
        raise RuntimeError("a backend failed half-way")
    assert conv.weight is weight and conv.bias is bias and bias.shape == (4,) and conv.out_channels == 4
    assert norm.running_mean.shape == (4,) and len(model) == 3
    assert optimizer.state[weight]["momentum_buffer"] is momentum
    assert optimizer.param_groups[0]["params"] == list(model.parameters())
