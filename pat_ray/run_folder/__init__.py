"""A run's folder as one object (``RunFolder``), and what it is made of: the names of its files
(``files``), its versions and ``latest`` link (``versions``), its lock (``lock``), the checks a
resume must pass (``resume_check``), the listing of many (``index``) and the copy of a staged run
into a store (``mirror``). Importing this package imports neither torch nor Ray."""

from pat_ray.run_folder.folder import RunFolder

__all__ = ["RunFolder"]
