"""A small digit classifier: the feature extractor for classifier FID/KID on MNIST-like data.

Inception-v3 features mean little on 28 x 28 grey digits, so sample quality on MNIST is
measured in the feature space of a classifier trained on the data itself (the 128-unit
layer before the logits). It is a supervised model trained once with ``keras.Model.fit``
(about two minutes on two CPU cores for 99% test accuracy), saved as a ``.keras`` file with
its test accuracy beside it, and loaded by ``metrics``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_score import atomic

CLASSIFIER_FILE = "classifier.keras"
SUMMARY_FILE = "classifier.json"


@keras.saving.register_keras_serializable("tf_score")
class DigitClassifier(keras.Model):
    """conv-conv-pool-conv-conv-pool-dense128-dropout-dense(classes) on [0, 1] images
    (widths 16, 16, 32, 32 by default).

    ``features(x)`` returns the 128 ReLU units before the logits (no dropout): the embedding
    for Fréchet and kernel distances. ``call(x)`` returns logits.
    """

    def __init__(
        self,
        image_shape=(28, 28, 1),
        num_classes: int = 10,
        width: int = 16,
        feature_dim: int = 128,
        dropout: float = 0.3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.width = int(width)
        self.feature_dim = int(feature_dim)
        self.dropout_rate = float(dropout)
        conv = dict(kernel_size=3, activation="relu")
        # A Sequential, not a Python list: tf.train.Checkpoint does not track a list of Keras 3
        # layers (its weights were silently missing from checkpoints; test_conformance).
        self.body = keras.Sequential(
            [
                keras.layers.Conv2D(width, padding="same", **conv),
                keras.layers.Conv2D(width, **conv),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(2 * width, padding="same", **conv),
                keras.layers.Conv2D(2 * width, **conv),
                keras.layers.MaxPooling2D(),
                keras.layers.Flatten(),
                keras.layers.Dense(feature_dim, activation="relu"),
            ],
            name="body",
        )
        self.drop = keras.layers.Dropout(dropout)
        self.head = keras.layers.Dense(num_classes)

    def build(self, input_shape=None):
        shape = self._body_input_shape()
        self.body.build(shape)
        self.head.build(self.body.compute_output_shape(shape))
        self.built = True

    def _body_input_shape(self) -> tuple:
        """The shape of what enters ``body``: the images."""
        return (None, *self.image_shape)

    def features(self, x):
        return self.body(tf.cast(x, self.compute_dtype) - 0.5)

    def call(self, x, training=False):
        return self.head(self.drop(self.features(x), training=training))

    def get_config(self):
        return {
            **super().get_config(),
            "image_shape": self.image_shape,
            "num_classes": self.num_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
            "dropout": self.dropout_rate,
        }


@keras.saving.register_keras_serializable("tf_score")
class NoisyDigitClassifier(DigitClassifier):
    """p(y | x_sigma): the ``DigitClassifier`` layers on noisy images x_sigma = x + sigma z
    (data units), for classifier guidance (``networks.contract.class_gradient``). The image
    enters as (x - 0.5) sigma_data / sqrt(sigma^2 + sigma_data^2) (the clean classifier's
    input at sigma = 0, unit scale at any sigma), beside a channel of log(sigma) / 4.

    ``call((x, sigma [B]))`` and ``class_logits(x, sigma)`` return logits; it has no FID
    features (``features`` refuses)."""

    #: the floor of sigma in its log channel (sigma = 0: clean images)
    MIN_SIGMA = 1e-3

    def __init__(self, image_shape=(28, 28, 1), num_classes: int = 10, sigma_data: float = 0.25,
                 **kwargs):  # fmt: skip
        super().__init__(image_shape, num_classes, **kwargs)
        self.sigma_data = float(sigma_data)

    def _body_input_shape(self) -> tuple:
        """The images and their log-sigma channel."""
        return (None, *self.image_shape[:-1], self.image_shape[-1] + 1)

    def features(self, x):
        raise ValueError("a noise-conditional classifier (network=noisy_conv) gives no FID "
                         "features: use a classifier of clean images (network=conv)")  # fmt: skip

    def class_logits(self, x, sigma):
        """Logits [B, num_classes] of p(y | x_sigma = x), sigma [B] or a scalar (float32)."""
        return tf.cast(self.head(self._hidden(x, sigma)), tf.float32)

    def _hidden(self, x, sigma):
        """The 128 units before the logits at x_sigma = x."""
        x = tf.cast(x, self.compute_dtype)
        sigma = tf.broadcast_to(tf.cast(sigma, self.compute_dtype), tf.shape(x)[:1])
        s = tf.reshape(sigma, [-1, 1, 1, 1])
        h = (x - 0.5) * self.sigma_data / tf.sqrt(tf.square(s) + self.sigma_data**2)
        log_s = tf.math.log(tf.maximum(s, self.MIN_SIGMA)) / 4.0
        h = tf.concat([h, tf.broadcast_to(log_s, tf.shape(x[..., :1]))], axis=-1)
        return self.body(h)

    def call(self, inputs, training=False):
        x, sigma = inputs
        return self.head(self.drop(self._hidden(x, sigma), training=training))

    def get_config(self):
        return {**super().get_config(), "sigma_data": self.sigma_data}


@dataclasses.dataclass(frozen=True)
class ClassifierResult:
    path: str
    test_accuracy: float
    train_accuracy: float
    epochs: int
    steps: int
    seconds: float
    params: int

    def summary(self) -> str:
        """One line of what training gave."""
        return (
            f"classifier: test accuracy {self.test_accuracy:.4f} ({self.epochs} epochs, "
            f"{self.steps} steps, {self.seconds:.1f} s, {self.params:,} parameters) -> {self.path}"
        )


def _pipeline(images, labels, batch_size, seed=None, sigma_fn=None, noise_seed=0):
    """(images in [0, 1], labels) batches, shuffled when ``seed`` is given; with ``sigma_fn``
    (``sigma_fn(batch, seed [2]) -> sigma [B]``) ((x + sigma z, sigma), labels), batch i's
    draws seeded (noise_seed, i)."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if seed is not None:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32) / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE
    )
    if sigma_fn is not None:

        def noisy(i, batch):
            (x, y), key = batch, tf.stack([tf.cast(noise_seed, tf.int64), i])
            s_sigma, s_z = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            sigma = sigma_fn(tf.shape(x)[0], s_sigma)
            z = tf.random.stateless_normal(tf.shape(x), s_z)
            return (x + tf.reshape(sigma, [-1, 1, 1, 1]) * z, sigma), y

        ds = ds.enumerate().map(noisy, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def train_classifier(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    workdir: str,
    *,
    num_steps: int,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    verbose: int = 2,
    sigma_fn=None,
) -> ClassifierResult:
    """Train on uint8 ``train`` = (images [N, H, W, C], labels [N]), whole epochs covering at
    least ``num_steps`` batches; report accuracy on ``test``; save ``workdir/classifier.keras``
    (written to a temporary name, then renamed) and ``classifier.json``. With ``sigma_fn``
    (``sigma_fn(batch, seed) -> sigma [B]``, the training sigmas) a ``NoisyDigitClassifier``
    learns p(y | x + sigma z); its test accuracy is at those sigmas."""
    x_train, y_train = train
    x_test, y_test = test
    if x_train.ndim != 4 or len(x_train) != len(y_train):
        raise ValueError(f"train images must be [N, H, W, C] with N labels, got {x_train.shape}")
    if num_steps < 1 or batch_size < 1:
        raise ValueError(f"num_steps and batch_size must be >= 1, got {num_steps}, {batch_size}")
    keras.utils.set_random_seed(seed)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    epochs = math.ceil(num_steps / steps_per_epoch)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    kind = DigitClassifier if sigma_fn is None else NoisyDigitClassifier
    model = kind(x_train.shape[1:], num_classes=num_classes)
    model.build()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    hist = model.fit(
        _pipeline(x_train, y_train, batch_size, seed, sigma_fn, seed),
        epochs=epochs,
        shuffle=False,  # the pipeline shuffles (seeded)
        verbose=verbose,
        callbacks=[keras.callbacks.TensorBoard(os.path.join(workdir, "tb"))],
    )
    seconds = time.time() - t0
    test = _pipeline(x_test, y_test, 512, sigma_fn=sigma_fn, noise_seed=seed + 1)
    _, test_acc = model.evaluate(test, verbose=0)
    path = os.path.join(workdir, CLASSIFIER_FILE)
    tmp = os.path.join(workdir, ".tmp-" + CLASSIFIER_FILE)
    model.save(tmp)
    os.replace(tmp, path)
    result = ClassifierResult(
        path=path,
        test_accuracy=float(test_acc),
        train_accuracy=float(hist.history["accuracy"][-1]),
        epochs=epochs,
        steps=epochs * steps_per_epoch,
        seconds=seconds,
        params=int(model.count_params()),
    )

    atomic.write_json(
        os.path.join(workdir, SUMMARY_FILE),
        {**dataclasses.asdict(result), "n_test": len(x_test), "batch_size": batch_size},
    )
    return result


def load_classifier(path: str) -> DigitClassifier:
    """A saved classifier; ``path`` is the ``.keras`` file or the directory holding it."""
    if os.path.isdir(path):
        path = os.path.join(path, CLASSIFIER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no classifier at {path}; train one with\n  python run_train.py "
            "--flagfile=flags/presets/mnist_classifier.cfg --workdir=runs/mnist_classifier"
        )
    model = keras.saving.load_model(path)
    if not isinstance(model, DigitClassifier):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a DigitClassifier")
    return model


def test_accuracy_of(path: str) -> float | None:
    """The test accuracy recorded beside a saved classifier, if any."""
    d = path if os.path.isdir(path) else os.path.dirname(path)
    summary = os.path.join(d, SUMMARY_FILE)
    if not os.path.exists(summary):
        return None
    with open(summary) as f:
        return float(json.load(f)["test_accuracy"])
