"""PaT + EPI in a training loop of your own, on a task that is not classification: torchvision's
LR-ASPP (MobileNetV3-Large) segmenting synthetic images of rectangles, pruned to a FLOPs budget.

    python -m examples.segmentation --epochs 8 --size 64 --images 64

The loop is plain PyTorch (per-pixel cross-entropy, AdamW, a one-cycle schedule); ``pat_ray.PaT``
takes its snapshots, decides with EPI when to start, and prunes the model in the same run.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision

import pat_ray


def rectangles(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images, each with a brighter rectangle; the mask marks it (class 1) on background (0)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, size, size, generator=generator) * 0.5
    masks = torch.zeros(count, size, size, dtype=torch.long)
    for i in range(count):
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        height, width = torch.randint(size // 4, size // 2, (2,), generator=generator).tolist()
        masks[i, top : top + height, left : left + width] = 1
    images += masks[:, None].float() * torch.tensor([1.0, 0.5, -0.5])[None, :, None, None]
    return images, masks


def iou(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(images)["out"].argmax(1)
    model.train()
    both, either = ((predicted == 1) & (masks == 1)).sum(), ((predicted == 1) | (masks == 1)).sum()
    return float(both) / max(1, int(either))


def main(argv: list[str] | None = None) -> pat_ray.PaT:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image side, pixels")
    parser.add_argument("--images", type=int, default=64, help="training images (validation: a quarter as many)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--budget", type=float, default=0.5, help="share of the FLOPs to keep")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=2
    )
    images, masks = rectangles(args.images, args.size, seed=0)
    val_images, val_masks = rectangles(max(1, args.images // 4), args.size, seed=1)
    batches = [(images[i : i + args.batch], masks[i : i + args.batch]) for i in range(0, args.images, args.batch)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=args.epochs * len(batches))
    pat = pat_ray.PaT(
        model,
        torch.zeros(1, 3, args.size, args.size),
        optimizer,
        epochs=args.epochs,
        budget=args.budget,
        start={"kind": "epi", "snapshot_every": 0.25, "window": 3, "patience": 2, "tau": 0.95},
        steps=2,
        interval=len(batches) // 2,
        iterations_per_epoch=len(batches),
    )
    model = pat.begin(model)
    for epoch in range(1, args.epochs + 1):
        for batch, target in batches:
            loss = F.cross_entropy(model(batch)["out"], target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            model = pat.step(model)
        model = pat.end_epoch(model)
        epi = next((s.epi for s in reversed(pat.history) if s.epi is not None), None)
        phase = "pruned" if pat.pruned else "pruning" if pat.pruning else "dense"
        epi_text = "-" if epi is None else f"{epi:.4f}"
        print(
            f"epoch {epoch:>2}  loss {loss.item():.4f}  IoU {iou(model, val_images, val_masks):.3f}  "
            f"EPI {epi_text}  {phase:<7}  FLOPs kept {pat.flops_kept:.3f}",
            flush=True,
        )
    how = "EPI fired" if pat.started_by == "policy" else "EPI did not fire: the latest start"
    print(f"pruning started at epoch {pat.trigger_position} ({how}); FLOPs kept {pat.flops_kept:.3f}")
    if pat.flops_kept > args.budget + pat_ray.BUDGET_TOLERANCE:
        raise SystemExit(f"the model keeps {pat.flops_kept:.3f} of its FLOPs, above the budget of {args.budget:g}")
    return pat


if __name__ == "__main__":
    main()
