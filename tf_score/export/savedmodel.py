"""SavedModel export for TF Serving (``keras.export.ExportArchive``), with in-graph sampling.

Layout: ``EXPORT_DIR/<model_name>/<version>/`` (TF Serving serves the highest version).

Score models (``export_score_model``):
  - ``serving_default`` = ``sample``: (num_samples int32 [], seed int32 [2]) -> samples float32
    [N, *shape] (images clipped to [0, 1]; and ``samples_uint8``) and ``num_evals``: the run's
    solver with its options (``SamplerConfig``) runs in the graph, seeded as ``api.generate``:
    serving seed (s, 0) gives the samples of ``generate(run, N, seed=s)``, and (s, i) its
    samples i, i + 1, ... (per-sample seeding; an export with seeding=batch: batch i).
  - ``sample_<solver>`` for each solver chosen at export time: the same, with that solver's
    float and int options as inputs, each checked against the registry's schema.
  - a class-conditional model's sample endpoints also take ``labels`` int32 [N] and
    ``guidance`` float32 [] (``Classes``; classifier-free guidance, 2 network calls per
    guided evaluation in the work cap).
  - ``score`` and ``denoise``: (x [B, *shape], sigma float32 [B]) -> the model contract.
VAEs (``families.vae.export_vae``, with the helpers here): ``encode``, ``decode``, ``sample``,
``limits`` and, for the Gaussian encoder, ``log_likelihood_bound`` (the IWAE bound, decoded in
chunks of bounded memory; batch x importance samples are its decodes, within the work cap).

Every request is validated in the graph before any allocation: counts must be >= 1 and at
most the export-time caps, options within their schema, float inputs finite, and the total
work (num_samples x network evaluations x the network's cost per evaluation,
``sampling.budget``: max(1, MFLOPs of one evaluation)) within ``max_evaluations``, so one
request cannot exhaust the server, whatever the network's size; outputs are checked finite
before they are returned. ``limits`` returns the caps and the cost.
``sampling.draw`` / the VAE functions are the exact in-process equivalents of the endpoints.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from tf_score import sampling
from tf_score.config import MAX_GUIDANCE, ExportConfig
from tf_score.networks import contract
from tf_score.sampling import budget

require = sampling.registry.graph_require
SEED_SPEC = tf.TensorSpec([2], tf.int32, name="seed")
NUM_SAMPLES_SPEC = tf.TensorSpec([], tf.int32, name="num_samples")
#: the caps of one request unless the export says otherwise (the config's defaults)
MAX_SAMPLES = ExportConfig.export_max_samples
MAX_EVALUATIONS = ExportConfig.export_max_evaluations


def version_dir(export_dir: str, model_name: str, version: int) -> str:
    if version < 1:
        raise ValueError(f"export version must be >= 1 (TF Serving ignores 0), got {version}")
    return os.path.join(export_dir, model_name, str(int(version)))


def in_range(value, name: str, low, high):
    """Assert low <= value <= high in the graph, one line naming the input."""
    return [
        require(value >= tf.cast(low, value.dtype), f"{name} must be >= {low}", value),
        require(
            value <= tf.cast(high, value.dtype),
            f"{name} must be <= {high} (the cap set when this model was exported)",
            value,
        ),
    ]


def checked(value, checks):
    """``value`` (a tensor or a tuple of them) computed only after ``checks`` pass: every op
    of the request must consume it, or it may run before the assertions."""
    with tf.control_dependencies(checks):
        if isinstance(value, tuple):
            return tuple(tf.identity(v) for v in value)
        return tf.identity(value)


def finite_input(value, name: str):
    """Assert every entry of a float input is finite (NaN / inf requests are refused)."""
    return [tf.debugging.assert_all_finite(value, message=f"{name} must be finite")]


def finite_output(outputs: dict) -> dict:
    """The float outputs, returned only if finite: a model or setting that diverges is an
    error naming the output, never NaN samples or scores."""
    return {
        k: tf.debugging.assert_all_finite(
            v, message=f"{k} came out non-finite: the model or sampler settings diverged"
        )
        if v.dtype.is_floating
        else v
        for k, v in outputs.items()
    }


def work_cap(work, max_evaluations: int, cost: budget.Cost, what: str | None = None):
    """Assert one request's work (samples x network evaluations each, a float64 tensor, times
    the network's cost units, ``sampling.budget``) is within the export-time cap: float64,
    so that no product of int32 inputs wraps around below it."""
    work = tf.cast(work, tf.float64) * float(cost.units)
    message = budget.work_message(cost, max_evaluations, *([what] if what else []))
    message += " (the cap set when this model was exported)"
    return [require(work <= float(max_evaluations), message, work)]


def to_uint8(x):
    """Images in [0, 1] -> uint8 0..255."""
    return tf.cast(tf.round(x * 255.0), tf.uint8)


def _image_outputs(x, is_image: bool) -> dict:
    if not is_image:
        return {"samples": x}
    x = tf.clip_by_value(x, 0.0, 1.0)
    return {"samples": x, "samples_uint8": to_uint8(x)}


def _score_endpoints(model, data_shape, max_score_batch):
    """``score(x, sigma)`` and ``denoise(x, sigma)``: the model contract, sigma per example."""
    x_spec = tf.TensorSpec([None, *data_shape], tf.float32, name="x")
    sigma_spec = tf.TensorSpec([None], tf.float32, name="sigma")

    def checked_inputs(x, sigma):
        checks = in_range(tf.shape(x)[0], "batch size of x", 1, max_score_batch)
        checks += finite_input(x, "x") + finite_input(sigma, "sigma")
        checks.append(tf.debugging.assert_positive(sigma, message="sigma must be > 0"))
        checks.append(
            tf.debugging.assert_equal(
                tf.shape(sigma)[0], tf.shape(x)[0], message="sigma needs one entry per x"
            )
        )
        return checked((x, sigma), checks)

    @tf.function(input_signature=[x_spec, sigma_spec])
    def score(x, sigma):
        x, sigma = checked_inputs(x, sigma)
        return finite_output({"score": tf.cast(model.score(x, sigma), tf.float32)})

    @tf.function(input_signature=[x_spec, sigma_spec])
    def denoise(x, sigma):
        x, sigma = checked_inputs(x, sigma)
        return finite_output({"denoised": tf.cast(model.denoise(x, sigma), tf.float32)})

    return score, denoise


@dataclasses.dataclass(frozen=True)
class Classes:
    """A class-conditional model's served inputs: ``labels`` int32 [N] (one class for all,
    one per sample, or none: unconditional, when it was trained with label dropout) and
    ``guidance`` float32 [] (classifier-free, 1: none)."""

    num_classes: int
    #: trained with label dropout: unconditional samples may be asked for (no labels)
    unconditional: bool


LABELS_SPEC = tf.TensorSpec([None], tf.int32, name="labels")
GUIDANCE_SPEC = tf.TensorSpec([], tf.float32, name="guidance")


def label_checks(labels, guidance, num_samples, classes: Classes) -> list:
    """The served labels and guidance, checked in the graph (one line naming the input)."""
    n, top = tf.size(labels), classes.num_classes - 1
    checks = [require((n == 0) | (n == 1) | (n == num_samples),
                      "labels must hold one class for all samples or one per sample", n),
              require((labels >= 0) & (labels <= top), f"labels must lie in [0, {top}]",
                      labels)]  # fmt: skip
    checks += finite_input(guidance, "guidance") + in_range(guidance, "guidance", 0.0,
                                                             MAX_GUIDANCE)  # fmt: skip
    if not classes.unconditional:
        checks.append(require(n > 0, "labels: the model was trained without label dropout, "
                                     "so it needs a class per request", n))  # fmt: skip
    checks.append(
        require(
            (n > 0) | tf.equal(guidance, 1.0),
            "guidance needs labels (classifier-free guidance)",
            guidance,
        )
    )
    return checks


def _specs(inputs, classes: Classes | None) -> list:
    dtypes = {float: tf.float32, int: tf.int32}
    specs = [NUM_SAMPLES_SPEC, SEED_SPEC] + [
        tf.TensorSpec([], dtypes[o.kind], name=o.name) for o in inputs
    ]
    return specs + ([LABELS_SPEC, GUIDANCE_SPEC] if classes else [])


def _checked_work(made, num_samples, caps, cost):
    """num_samples after the work of a plan with a known evaluation count is checked."""
    most = sampling.registry.MAX_EVALUATIONS_PER_SAMPLE
    evaluations = tf.cast(made.evaluations, tf.float64)
    checks = work_cap(tf.cast(num_samples, tf.float64) * evaluations, caps["max_evaluations"],
                      cost)  # fmt: skip
    checks.append(
        require(
            evaluations <= float(most),
            f"network evaluations per sample must be <= {most}",
            evaluations,
        )
    )
    return checked(num_samples, checks)


def _draw_endpoint(model, grid, space, name: str, fixed: dict, caps: dict, cost, served: bool,
                   seeding: str = "per_sample", classes: Classes | None = None):  # fmt: skip
    """A ``tf.function`` drawing from solver ``name``: inputs num_samples and seed (the pair
    ``seeding`` reads), with ``served`` its servable options (checked against its schema),
    and for a class-conditional model (``classes``) labels and guidance; the other options
    are ``fixed``. Work (``cost`` per network evaluation, 2 per guided evaluation) over
    ``caps["max_evaluations"]`` is refused before (or, adaptive, after)."""
    inputs = [o for o in sampling.get(name).options if o.servable] if served else []
    is_image = len(space.shape) == 3

    def run(num_samples, seed, *values):
        labels = guidance = None
        if classes:
            *values, labels, guidance = values
        checks = in_range(num_samples, "num_samples", 1, caps["max_samples"])
        for o, v in zip(inputs, values, strict=True):
            checks += o.graph_checks(v)
        if classes:
            checks += label_checks(labels, guidance, num_samples, classes)
        num_samples, *values = checked((num_samples, *values), checks)
        options = {**fixed, **{o.name: v for o, v in zip(inputs, values, strict=True)}}
        plain = sampling.plan(name, model, grid, options, seeding)
        guided = None
        if classes:
            guided = sampling.plan(name, contract.guide(model, True, None), grid, options,
                                   seeding)  # fmt: skip
        shape = sampling.registry.batch_shape(num_samples, space)

        def draw(made, bind=None):
            n = num_samples if made.evaluations is None else _checked_work(
                made, num_samples, caps, cost)  # fmt: skip
            x0 = made.start(shape, seed, space, None if bind is None else made.model.bind(*bind))
            return made.run(checked(x0, [n]), seed, bind=bind)

        if classes:
            out = tf.cond(
                tf.size(labels) > 0,
                lambda: draw(guided, (tf.broadcast_to(labels, [num_samples]), guidance)),
                lambda: draw(plain),
            )
        else:
            out = draw(plain)
        work = tf.cast(num_samples, tf.float64) * tf.cast(out.num_evals, tf.float64)
        x = checked(out.samples, work_cap(work, caps["max_evaluations"], cost))
        return finite_output({**_image_outputs(x, is_image), "num_evals": out.num_evals})

    return tf.function(run, input_signature=_specs(inputs, classes))


def export_score_model(
    network: keras.Model,
    model,
    sigmas,
    space,
    path: str,
    sampler,
    samplers: tuple[str, ...] = (),
    max_samples: int = MAX_SAMPLES,
    max_score_batch: int = 1024,
    max_evaluations: int = MAX_EVALUATIONS,
    seeding: str = "per_sample",
    classes: Classes | None = None,
) -> str:
    """Write a servable SavedModel of a score model (``network``'s variables, ``model`` its
    contract, ``networks.contract``) to ``path``; a served seed (s, i) is samples i, i + 1,
    ... of seed s (``seeding`` per_sample) or batch i of seed s (batch). A class-conditional
    model's sample endpoints also take ``labels`` and ``guidance`` (``Classes``).

    ``serving_default`` (= ``sample``) runs ``sampler`` (``config.SamplerConfig``: the registered
    solver and its options, fixed here) on the grid ``sigmas``, seeded exactly as
    ``api.generate``; ``sample_<name>`` for each solver of ``samplers`` takes that solver's
    float and int options as inputs, checked against its schema. Caps bound every request:
    ``max_samples`` and ``max_evaluations`` units of work in all (num_samples x network
    evaluations per sample x the network's measured cost per evaluation, ``sampling.budget``;
    the adaptive ODE's count is checked after it ran). ``limits`` returns them and the cost.
    """

    grid = np.asarray(sigmas, np.float32)
    caps = dict(max_samples=max_samples, max_score_batch=max_score_batch,
                max_evaluations=max_evaluations)  # fmt: skip
    cost = budget.network_cost(model, tuple(space.shape))
    archive = keras.export.ExportArchive()
    archive.track(network)
    default = sampler.sampler
    common = dict(seeding=seeding, classes=classes)
    sample = _draw_endpoint(model, grid, space, default, sampling.options_of(sampler), caps,
                            cost, False, **common)  # fmt: skip
    archive.add_endpoint("sample", sample)  # the first endpoint is also serving_default
    for name in dict.fromkeys(samplers):
        fixed = sampling.options_of(sampler, name)
        archive.add_endpoint(f"sample_{name}", _draw_endpoint(
            model, grid, space, name, fixed, caps, cost, True, **common))  # fmt: skip
    score, denoise = _score_endpoints(model, tuple(space.shape), max_score_batch)
    archive.add_endpoint("score", score)
    archive.add_endpoint("denoise", denoise)
    archive.add_endpoint("limits", limits_endpoint(**caps, **cost_outputs(cost)))
    archive.write_out(path, verbose=False)
    return path


def cost_outputs(cost: budget.Cost) -> dict:
    """The cost of one network evaluation as ``limits`` outputs: work units, FLOPs."""
    return {"evaluation_cost": cost.units, "flops_per_evaluation": cost.flops}


def limits_endpoint(**caps):
    """``limits``: the export-time caps as outputs (``saved_model_cli run --signature_def
    limits --input_exprs 'unused=0'`` prints them; the input is ignored)."""

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="unused")])
    def limits(unused):
        del unused
        return {
            k: tf.constant(v, tf.float32 if isinstance(v, float) else tf.int64)
            for k, v in caps.items()
        }

    return limits
