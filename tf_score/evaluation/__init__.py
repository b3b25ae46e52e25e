"""Evaluation: sample-quality metrics (mode weight, MMD, kernel two-sample test, FID/KID with
their floor), paired differences, and figures (PNG scatter panels, image grids, GIFs)."""
