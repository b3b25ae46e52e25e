"""Throughput benchmarks of the NCSN networks: training images/s and sampling evaluations/s.

    python benchmarks/run_bench.py --out=runs/bench/bench.json [--only=refinenet,cpu_preset]

Each figure is the median over ``--repeats`` timed runs after a warm-up call; the warm-up
(tracing + compilation) time is reported separately. Training = one compiled step of the NCSN
objective (anneal DSM, level per example) with Adam on random [0, 1] images, the same work the
training loop's step does; sampling = annealed-Langevin steps, one network evaluation per image
per step. Peak RSS is the process maximum.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OUT = flags.DEFINE_string("out", "runs/bench/bench.json", "Where to write the JSON.")
REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per figure (median reported).")
ONLY = flags.DEFINE_list("only", ["refinenet", "cpu_preset"], "Which models to measure.")
PRECISIONS = flags.DEFINE_list(
    "precisions", ["float32", "mixed_bfloat16"], "Dtype policies for the RefineNet figures."
)
JIT = flags.DEFINE_boolean("jit", False, "XLA-compile the train step and sampler.")


def _median_time(fn, repeats):
    t0 = time.perf_counter()
    fn()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), warmup


def measure(
    make_model, image_shape, train_batch, sample_batch, sample_steps, precision, repeats, jit
):
    import keras
    import tensorflow as tf

    from tf_score import losses, samplers
    from tf_score.sigmas import geometric_sigmas

    keras.mixed_precision.set_global_policy(precision)
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    model = make_model(sigmas)
    opt = keras.optimizers.Adam(1e-3)
    opt.build(model.trainable_variables)
    x = tf.random.uniform([train_batch, *image_shape], seed=1)

    @tf.function(jit_compile=jit)
    def step(x, seed):
        levels = losses.sample_levels(train_batch, len(sigmas), seed)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(losses.anneal_dsm(model, x, sigmas, levels, seed))
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    seed = tf.constant([0, 1])
    train_s, train_warm = _median_time(lambda: step(x, seed).numpy(), repeats)
    x0 = samplers.uniform_init([sample_batch, *image_shape], [0, 2])
    # one level, sample_steps steps: sample_steps evaluations per image
    one_level = sigmas[-1:]
    sample_s, sample_warm = _median_time(
        lambda: samplers.annealed_langevin(
            model,
            x0,
            one_level,
            tf.constant([0, 3]),
            2e-5,
            sample_steps,
            denoise=False,
            jit_compile=jit,
        ).samples.numpy(),
        repeats,
    )
    keras.mixed_precision.set_global_policy("float32")
    return {
        "params": int(model.count_params()),
        "train_images_per_s": train_batch / train_s,
        "train_step_seconds": train_s,
        "train_compile_seconds": train_warm - train_s,
        "sample_evals_per_s": sample_batch * sample_steps / sample_s,
        "sample_compile_seconds": sample_warm - sample_s,
    }


def main(argv):
    del argv
    import tensorflow as tf

    from tf_score.networks import ConditionalResNet, CondRefineNetDilated

    results = {
        "tensorflow": tf.__version__,
        "jit": JIT.value,
        "repeats": REPEATS.value,
        "cpu_count": os.cpu_count(),
    }
    if "refinenet" in ONLY.value:
        for precision in PRECISIONS.value:
            r = measure(
                lambda s: _built(CondRefineNetDilated((28, 28, 1), s, ngf=64)),
                (28, 28, 1),
                128,
                64,
                5,
                precision,
                REPEATS.value,
                JIT.value,
            )
            suffix = "" if precision == "float32" else "_bf16"
            results["refinenet_mnist_params"] = r["params"]
            for k in (
                "train_images_per_s",
                "sample_evals_per_s",
                "train_compile_seconds",
                "sample_compile_seconds",
                "train_step_seconds",
            ):
                results[f"refinenet_mnist_{k}{suffix}"] = r[k]
            print(precision, r, flush=True)
    if "cpu_preset" in ONLY.value:
        r = measure(
            lambda s: _built(
                ConditionalResNet((28, 28, 1), s, ngf=16, channel_mults=(1, 2, 2), num_blocks=2)
            ),
            (28, 28, 1),
            64,
            64,
            20,
            "float32",
            REPEATS.value,
            JIT.value,
        )
        results["cpu_preset_params"] = r["params"]
        results["cpu_preset_train_images_per_s"] = r["train_images_per_s"]
        results["cpu_preset_sample_evals_per_s"] = r["sample_evals_per_s"]
        results["cpu_preset_train_compile_seconds"] = r["train_compile_seconds"]
        print("cpu_preset", r, flush=True)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.makedirs(os.path.dirname(os.path.abspath(OUT.value)), exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


def _built(model):
    model.build()
    return model


if __name__ == "__main__":
    app.run(main)
