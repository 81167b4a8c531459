"""A Lightning training script as a user writes one, with ``PaTCallback``: run by
``tests/test_lightning.py`` as ``python _lightning_script.py ROOT DEVICES`` (DDP needs a script of
its own: Lightning starts the other ranks by running it again)."""

from __future__ import annotations

import os
import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pat_ray.lightning import PaTCallback


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(16, 4)
        self.example_input_array = torch.zeros(1, 1, 8, 8)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))

    def training_step(self, batch, index):
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(128, 1, 8, 8, generator=generator), torch.randint(0, 4, (128,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=16)


def fit(root: str, devices: int, epochs: int, resume: str | None = None) -> None:
    torch.manual_seed(0)
    model = Net()
    pat = PaTCallback(budget=0.5, start={"kind": "fixed", "epoch": 2}, steps=2, interval=2)
    saving = pl.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        callbacks=[pat, saving],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, data(), ckpt_path=resume)
    assert pat.pat is not None
    width = model.body[0].out_channels
    # one write per line: both ranks share the pipe, and unbuffered print() writes each piece apart
    line = f"RESULT {trainer.global_rank} {pat.pat.architecture.fingerprint()} {pat.pat.pruned} {width}\n"
    os.write(sys.stdout.fileno(), line.encode())


if __name__ == "__main__":
    root, devices = sys.argv[1], int(sys.argv[2])
    fit(root, devices, epochs=5)
    if devices == 1:  # a new process would do the same: a dense module, resumed from a pruned checkpoint
        fit(root, 1, epochs=6, resume=f"{root}/epoch=2-step=24.ckpt")
