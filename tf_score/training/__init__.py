"""Training: the one loop, the step (gradients, all-reduce, NaN guard, EMA), checkpoints,
the workdir lock, tf.distribute strategies, and stop signals."""
