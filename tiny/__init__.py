"""The built-in tiny world: a domain where SOAR's premise holds and every question can be graded
exactly (world.py), the small model pretrained on it and its hard set (model.py), and the research
probes that measure what the world offers the method (probes.py, never imported by a run)."""
