"""Problem sets: benchmark and local-file loaders (benchmarks.py), the fail@k hard-set builder
(build_hard.py), and the synthetic tiny world with its tiny model (tiny_world.py, tiny_model.py)."""
