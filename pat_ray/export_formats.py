"""The formats ``pat-ray export`` writes, and the suffix of each one's file.

In a module of their own, without torch, so the command line offers them (``--format``,
``--help``) before it imports what writes them (``pat_ray.export``)."""

from __future__ import annotations

FORMATS = ("state_dict", "torchscript", "pt2", "onnx")
SUFFIXES = {"state_dict": ".state_dict.pt", "torchscript": ".torchscript.pt", "pt2": ".pt2", "onnx": ".onnx"}
