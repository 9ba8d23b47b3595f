"""The built-in tiny world: a domain where SOAR's premise holds and every question can be graded
exactly (world.py), and the small model pretrained on it, shipped with its hard set (model.py,
pretrained/). The research probes that measure what the world offers the method are the script
probes.py, at the top."""
