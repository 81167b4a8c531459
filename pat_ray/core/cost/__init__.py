"""What a model costs: FLOPs and parameters from channel counts and by measurement
(``flops``), a measured per-layer latency table (``latency``, ``probe``) and the one way pat_ray
times anything (``timing``)."""
