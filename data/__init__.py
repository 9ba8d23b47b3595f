"""Problem sets: local files and the paper's benchmarks, as {"problem", "answer"} rows (benchmarks.py)."""
