"""Model families: how a score model, a VAE and the classifier are built from a config,
trained by the loop, loaded from a workdir and evaluated."""
