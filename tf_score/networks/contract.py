"""The one model contract: every score model answers, for data-unit x [B, ...] and a float
sigma per example [B] (a scalar is broadcast),

    denoise(x, sigma) = E[x_0 | x_sigma = x]                       (the denoiser D)
    score(x, sigma)   = grad_x log p_sigma(x) = (D(x; sigma) - x) / sigma^2   (Tweedie)

Continuous-sigma denoisers (``preconditioning.Denoiser``) implement it directly. A network
conditioned on the discrete levels of its training schedule (NCSN: ``net(x, levels)``) is
wrapped by ``LevelScoreModel``, which maps sigma onto those levels, the way k-diffusion's
``DiscreteSchedule`` wraps discrete-time models; so every solver runs on every model.
``ScoreFunction`` wraps a plain ``fn(x, sigma)`` (exact scores of known distributions).

``network_calls(off_grid)`` is the cost of one contract call in network evaluations: 1 for a
continuous model; for a level-conditioned one 1 at its levels and 2 between them.

A class-conditional model (``num_classes`` > 0) also takes ``denoise(x, sigma, labels)``
with labels int32 [B], index ``num_classes`` meaning "no label". ``conditioned(model,
labels, guidance=w)`` (``Guided``) is the view of it that solvers call: conditioned on the
labels, guided (classifier-free, autoguidance, or by a noise-conditional classifier's
``class_logits(x, sigma)``), answering ``denoise(x, sigma)`` again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf


def per_example_sigma(x, sigma) -> tf.Tensor:
    """sigma as float32 [B] for x [B, ...] (a scalar is broadcast)."""
    return tf.broadcast_to(tf.cast(sigma, tf.float32), tf.shape(x)[:1])


def expand_like(sigma, x) -> tf.Tensor:
    """sigma [B] reshaped to broadcast against x [B, ...]."""
    return tf.reshape(sigma, [-1] + [1] * (len(x.shape) - 1))


class ScoreModel:
    """Base of the contract: subclasses define ``score`` or ``denoise`` (each gives the other)."""

    #: the discrete levels the model is defined on (None: continuous in sigma)
    levels = None

    def score(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        sigma = per_example_sigma(x, sigma)
        return (self.denoise(x, sigma) - x) / expand_like(tf.square(sigma), x)

    def denoise(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        sigma = per_example_sigma(x, sigma)
        return x + expand_like(tf.square(sigma), x) * self.score(x, sigma)

    def network_calls(self, off_grid: bool = True) -> int:
        del off_grid
        return 1

    def conditioned(self, labels=None, guidance=1.0, **kwargs):
        """This model conditioned on ``labels`` and guided (``conditioned``)."""
        return conditioned(self, labels, guidance, **kwargs)


class ScoreFunction(ScoreModel):
    """The contract around a callable ``score_fn(x, sigma [B]) -> s`` (an exact score)."""

    def __init__(self, score_fn: Callable, name: str = "score_function"):
        self._fn = score_fn
        self.name = name

    def score(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        return tf.cast(self._fn(x, per_example_sigma(x, sigma)), tf.float32)


class DenoiserFunction(ScoreModel):
    """The contract around a callable ``denoise_fn(x, sigma [B], labels=None)`` (an exact
    denoiser), class-conditional when ``num_classes`` > 0."""

    def __init__(self, denoise_fn: Callable, num_classes: int = 0, name: str = "denoiser"):
        self._fn, self.num_classes, self.name = denoise_fn, int(num_classes), name

    def denoise(self, x, sigma, labels=None) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        sigma = per_example_sigma(x, sigma)
        out = self._fn(x, sigma) if labels is None else self._fn(x, sigma, labels)
        return tf.cast(out, tf.float32)


class LevelScoreModel(ScoreModel):
    """A score network conditioned on level indices, ``network(x, levels int32 [B])``, trained
    on the decreasing ``levels`` sigma_1 > ... > sigma_L, as a model of any sigma: at one of
    its levels the network's own output (1 evaluation); between two levels the scores of both,
    linear in log sigma (2 evaluations); outside [sigma_L, sigma_1] clamped to the end level
    (adaptive solvers probe past the end, even sigma <= 0, where log sigma is NaN)."""

    def __init__(self, network: Callable, levels):
        self.network = network
        self.levels = np.asarray(levels, np.float32)
        self._log_levels = tf.math.log(tf.constant(self.levels))

    def _at(self, x, index):
        return tf.cast(self.network(x, index), tf.float32)

    def _log_sigma(self, sigma):
        return tf.math.log(tf.clip_by_value(sigma, self.levels[-1], self.levels[0]))

    def _between(self, x, t):
        """Scores linear in log sigma between the two levels around t = log sigma [B]."""
        log_s, last = self._log_levels, len(self.levels) - 1
        # i with log_s[i] >= t >= log_s[i + 1]
        above = tf.reduce_sum(tf.cast(log_s[None, :] > t[:, None], tf.int32), axis=-1)
        i = tf.clip_by_value(above - 1, 0, last - 1)
        log_i, log_j = tf.gather(log_s, i), tf.gather(log_s, i + 1)
        w = expand_like(tf.math.divide_no_nan(log_i - t, log_i - log_j), x)
        return (1.0 - w) * self._at(x, i) + w * self._at(x, i + 1)

    def _nearest(self, sigma):
        """(index of the level equal to each sigma, whether every sigma is one)."""
        at_level = tf.equal(sigma[:, None], tf.constant(self.levels)[None, :])
        nearest = tf.argmax(tf.cast(at_level, tf.int32), axis=1, output_type=tf.int32)
        return nearest, tf.reduce_all(tf.reduce_any(at_level, axis=1))

    def score(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        sigma = per_example_sigma(x, sigma)
        if len(self.levels) == 1:
            return self._at(x, tf.zeros(tf.shape(x)[:1], tf.int32))
        nearest, on_grid = self._nearest(sigma)
        # one sigma for the batch: the log of the scalar, broadcast (a vector's log may differ
        # from the scalar's in the last bit, and solvers share one sigma)
        shared = tf.reduce_all(tf.equal(sigma, sigma[0]))
        t = tf.where(shared, tf.fill(tf.shape(sigma), self._log_sigma(sigma[0])),
                     self._log_sigma(sigma))  # fmt: skip
        # exactly at a level: one call (near one, the interpolation is as smooth as elsewhere)
        return tf.cond(on_grid, lambda: self._at(x, nearest), lambda: self._between(x, t))

    def at_levels(self) -> ScoreModel:
        """This model for solvers that call it only at its levels (``registry.plan`` checks
        that statically): the network's call alone, no branch to interpolate."""
        if not hasattr(self, "_at_levels"):
            self._at_levels = _AtLevels(self)
        return self._at_levels

    def network_calls(self, off_grid: bool = True) -> int:
        return 2 if off_grid and len(self.levels) > 1 else 1


class _AtLevels(ScoreModel):
    """A ``LevelScoreModel`` called only at its levels (see ``LevelScoreModel.at_levels``)."""

    def __init__(self, model: LevelScoreModel):
        self.model, self.levels = model, model.levels

    def score(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        nearest, _ = self.model._nearest(per_example_sigma(x, sigma))
        return self.model._at(x, nearest)

    def network_calls(self, off_grid: bool = True) -> int:
        return 1


def grid_on_levels(model, sigmas) -> bool:
    """Whether every sigma of the grid is one of the model's levels (continuous: always)."""
    levels = getattr(model, "levels", None)
    if levels is None:
        return True
    sig = np.asarray(sigmas, np.float32)
    return bool(np.all(np.isin(sig, np.asarray(levels, np.float32))))


# --- conditioning and guidance ---------------------------------------------------------------


def denoise_with(model, x, sigma, labels=None) -> tf.Tensor:
    """``model.denoise(x, sigma)``, given ``labels`` [B] when there are some (a model that
    takes none is called without: an unconditional model)."""
    if labels is None:
        return tf.cast(model.denoise(x, sigma), tf.float32)
    return tf.cast(model.denoise(x, sigma, labels), tf.float32)


def is_classifier(guide) -> bool:
    """Whether ``guide`` is a noise-conditional classifier: ``class_logits(x, sigma [B])``
    gives the logits of p(y | x_sigma = x) [B, num_classes] (classifier guidance), not a
    denoiser (autoguidance)."""
    return callable(getattr(guide, "class_logits", None))


class ClassifierFunction:
    """A noise-conditional classifier around a callable ``logits_fn(x, sigma [B])`` (the exact
    one of a known mixture: ``data.GaussianMixtureToy.class_logits``)."""

    def __init__(self, logits_fn: Callable, num_classes: int, name: str = "classifier"):
        self._fn, self.num_classes, self.name = logits_fn, int(num_classes), name

    def class_logits(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        return tf.cast(self._fn(x, per_example_sigma(x, sigma)), tf.float32)


def class_gradient(classifier, x, sigma, labels) -> tf.Tensor:
    """grad_x log p(y | x_sigma = x) [B, ...] of a noise-conditional classifier at labels y
    [B]: the term that classifier guidance adds to the score (Dhariwal & Nichol 2021)."""
    x = tf.cast(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.cast(classifier.class_logits(x, sigma), tf.float32)
        log_p = tf.gather(tf.nn.log_softmax(logits), labels, axis=1, batch_dims=1)
        total = tf.reduce_sum(log_p)  # rows are independent: the sum's gradient is per row
    return tape.gradient(total, x)


class Guided(ScoreModel):
    """A model conditioned on class labels and guided, answering ``denoise(x, sigma)`` as
    every solver calls it, with guidance weight w:

    * classifier-free (Ho & Salimans 2022): D = D_u + w (D_c - D_u), D_c conditioned on the
      labels and D_u on "no label" (one network trained with label dropout); w = 1 is the
      conditional model, w = 0 the unconditional one. The two go through the network as one
      batch of 2B;
    * autoguidance (Karras et al. 2024): D = D_weak + w (D - D_weak) with ``weak`` a worse
      model of the same data (smaller, trained shorter, a short post-hoc EMA), conditioned
      on the same labels (or none);
    * classifier guidance (Dhariwal & Nichol 2021) when ``weak`` is a noise-conditional
      classifier (``is_classifier``): D = D_u + w sigma^2 grad_x log p(y | x_sigma), the
      score plus w times the classifier's; w = 1 with the exact classifier is the
      conditional model (Bayes). D_u is an unconditional model, or a conditional one at
      "no label". The classifier's forward and backward pass are not network evaluations;
    * a guidance ``interval`` (lo, hi) (Kynkaanniemi et al. 2024): w where lo <= sigma <= hi,
      1 (no guidance) elsewhere.

    Built unbound (a recipe: ``labelled``, a Python ``guidance`` or None for a tensor given
    when bound); ``bind(labels, guidance)`` gives the view a solver calls. A recipe made once
    and bound inside a compiled draw (``sampling.Plan.run``) traces once for all batches.
    """

    def __init__(self, model, labelled: bool, guidance=1.0, weak=None, interval=None):
        self.model, self.weak, self.labelled = model, weak, bool(labelled)
        self.guidance = None if guidance is None else float(guidance)
        self.interval = None if interval is None else tuple(float(v) for v in interval)
        self.levels = getattr(model, "levels", None)
        self.labels, self.weight = None, self.guidance
        self.classifier = weak if is_classifier(weak) else None

    def bind(self, labels=None, guidance=None) -> Guided:
        """The view of this recipe for ``labels`` int32 [B] (if labelled) and the weight
        ``guidance`` (a tensor; only when the recipe's is None)."""
        view = Guided(self.model, self.labelled, self.guidance, self.weak, self.interval)
        view.labels = None if labels is None else tf.cast(labels, tf.int32)
        view.weight = self.guidance if self.guidance is not None else guidance
        if (view.labels is None) == self.labelled or view.weight is None:
            raise ValueError("bind the labels (if labelled) and the weight (if not fixed)")
        return view

    def class_share(self, sigma):
        """The share of the class's mean in a labelled start's centre at ``sigma`` (the rest is
        the data's mean): the weight the labelled denoiser has there, clipped to [0, 1] (w
        between the unconditional model, 0, and the conditional one, 1; a stronger w starts
        at the class's mean, when the space knows it); 1 for autoguidance, whose both models
        take the labels."""
        if not self.labelled:
            return 0.0
        if self.weak is not None and self.classifier is None:
            return 1.0
        w = tf.cast(self.weight, tf.float32)
        if self.interval is not None:
            lo, hi = self.interval
            w = w if lo <= float(sigma) <= hi else tf.constant(1.0)
        return tf.clip_by_value(w, 0.0, 1.0)

    def _fixed(self):
        """The one model a fixed weight needs alone (w = 1: the guided one, w = 0: the
        reference), or None when both are evaluated."""
        if self.interval is not None or self.guidance not in (0.0, 1.0):
            return None
        if self.guidance == 1.0 and self.classifier is not None:
            return None
        return "reference" if self.guidance == 0.0 else "guided"

    def network_calls(self, off_grid: bool = True) -> int:
        """What one call costs: both models' evaluations (2 for classifier-free guidance)
        unless a fixed weight of 0 or 1 needs only one."""
        own = self.model.network_calls(off_grid)
        if (self.weak is None and not self.labelled) or self.classifier is not None:
            return own
        ref = own if self.weak is None else self.weak.network_calls(off_grid)
        return {"guided": own, "reference": ref}.get(self._fixed(), own + ref)

    def at_levels(self) -> Guided:
        """This view on a level-conditioned model's at-levels views (``LevelScoreModel``)."""
        if not hasattr(self.model, "at_levels"):
            return self
        weak = self.weak.at_levels() if hasattr(self.weak, "at_levels") else self.weak
        view = Guided(self.model.at_levels(), self.labelled, self.guidance, weak, self.interval)
        view.labels, view.weight = self.labels, self.weight
        return view

    def _pair(self, x, sigma):
        """(guided D, reference D) at x [B, ...], sigma [B]."""
        if self.classifier is not None:
            d_u = denoise_with(self.model, x, sigma)  # a conditional model: "no label"
            grad = class_gradient(self.classifier, x, sigma, self.labels)
            return d_u + expand_like(tf.square(sigma), x) * grad, d_u
        if self.weak is not None:
            return (denoise_with(self.model, x, sigma, self.labels),
                    denoise_with(self.weak, x, sigma, self.labels))  # fmt: skip
        batch = tf.shape(x)[0]
        none = tf.fill([batch], tf.constant(self.model.num_classes, tf.int32))
        both = denoise_with(self.model, tf.concat([x, x], 0), tf.concat([sigma, sigma], 0),
                            tf.concat([self.labels, none], 0))  # fmt: skip
        return both[:batch], both[batch:]

    def denoise(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        sigma = per_example_sigma(x, sigma)
        if self.weak is None and not self.labelled:
            return denoise_with(self.model, x, sigma)
        fixed = self._fixed()
        if fixed == "guided":
            return denoise_with(self.model, x, sigma, self.labels)
        if fixed == "reference":
            return (denoise_with(self.model, x, sigma)
                    if self.weak is None or self.classifier is not None
                    else denoise_with(self.weak, x, sigma, self.labels))  # fmt: skip
        d, d_ref = self._pair(x, sigma)
        w = tf.broadcast_to(tf.cast(self.weight, tf.float32), tf.shape(sigma))
        if self.interval is not None:
            lo, hi = self.interval
            w = tf.where((sigma >= lo) & (sigma <= hi), w, tf.ones_like(w))
        return d_ref + expand_like(w, x) * (d - d_ref)


def unguided(model):
    """The model a ``Guided`` view guides (itself if it is none): whose network one
    evaluation runs."""
    while isinstance(model, Guided):
        model = model.model
    return model


def conditioned(model, labels=None, guidance=1.0, weak=None, interval=None) -> Guided:
    """``model`` conditioned on ``labels`` [B] (None: unconditional) and guided with weight
    ``guidance``: classifier-free, or autoguidance by ``weak`` (see ``Guided``); a view
    every solver runs, e.g. ``sampling.draw(name, conditioned(m, y, 2.0), ...)``."""
    recipe = guide(model, labels is not None, guidance, weak, interval)
    return recipe.bind(labels, None)


def guide(model, labelled: bool, guidance=1.0, weak=None, interval=None) -> Guided:
    """The unbound ``Guided`` recipe (``guidance`` None: a weight given when bound), or
    ValueError naming what does not fit: labels for an unconditional model (unless a
    classifier guides it), guidance with neither labels nor a weak model, a weak model on
    other levels or with other classes, a classifier without labels, a reversed interval."""
    classes = int(getattr(model, "num_classes", 0) or 0)
    if is_classifier(weak):
        _check_classifier(weak, labelled, classes)
    elif labelled and not classes:
        raise ValueError("labels: the model is unconditional (trained with num_classes=0)")
    if weak is None and not labelled and guidance not in (None, 1.0):
        raise ValueError(f"guidance={guidance} needs labels (classifier-free) or a weak "
                         "model (autoguidance)")  # fmt: skip
    if weak is not None and not is_classifier(weak):
        if labelled and int(getattr(weak, "num_classes", 0) or 0) != classes:
            raise ValueError("the weak model of autoguidance must take the same labels")
        levels, weak_levels = getattr(model, "levels", None), getattr(weak, "levels", None)
        if (levels is None) != (weak_levels is None) or (
            levels is not None and not np.array_equal(levels, weak_levels)
        ):
            raise ValueError("the weak model of autoguidance must be on the model's levels")
    if interval is not None:
        lo, hi = (float(v) for v in interval)
        if not (0.0 <= lo <= hi and np.isfinite(hi)):
            raise ValueError(f"guidance interval must be 0 <= lo <= hi < inf, got {interval}")
    if guidance is not None and not np.isfinite(float(guidance)):
        raise ValueError(f"guidance must be finite, got {guidance}")
    return Guided(model, labelled, guidance, weak, interval)


def _check_classifier(classifier, labelled: bool, classes: int) -> None:
    """ValueError unless a guiding classifier has labels to guide to and, for a conditional
    model, the model's classes."""
    if not labelled:
        raise ValueError("classifier guidance needs labels: the classes to guide to")
    own = int(getattr(classifier, "num_classes", 0) or 0)
    if classes and own != classes:
        raise ValueError(f"the guiding classifier has {own} classes, the model {classes}")
