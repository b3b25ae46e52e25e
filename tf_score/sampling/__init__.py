"""Sampling: the solver registry (one signature, one option schema per solver), the solvers
(Langevin, annealed Langevin, ODE and SDE solvers), and conditioning wrappers (inpainting)."""
