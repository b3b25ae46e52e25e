"""Call an exported tf_score model on TF Serving over gRPC (tensorflow-serving-api messages).

    python serving/grpc_client.py --server=localhost:8500 --model_name=toy_mixture \
        --num_samples=16 --seed=0,1 --out=samples.npy

``sample`` builds the ``PredictRequest`` for the ``sample`` (= serving_default) signature;
``predict`` sends any request and returns the outputs as NumPy arrays.
"""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def sample_request(model_name: str, num_samples: int, seed, signature: str = "sample"):
    """The PredictRequest of the in-graph sampler: num_samples int32 [], seed int32 [2]."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    request.inputs["num_samples"].CopyFrom(tf.make_tensor_proto(num_samples, dtype=tf.int32))
    request.inputs["seed"].CopyFrom(tf.make_tensor_proto(list(seed), dtype=tf.int32, shape=[2]))
    return request


def add_inputs(request, **arrays) -> None:
    """Set more named inputs of ``request`` (e.g. ``n_steps_each``, ``step_lr``)."""
    for name, value in arrays.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))


def predict(channel: grpc.Channel, request, timeout: float = 600.0) -> dict[str, np.ndarray]:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(request, timeout)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def main(argv):
    del argv
    f = flags.FLAGS
    request = sample_request(f.model_name, f.num_samples, [int(s) for s in f.seed])
    with grpc.insecure_channel(f.server) as channel:
        outputs = predict(channel, request)
    np.save(f.out, outputs["samples"])
    print({k: (v.dtype, v.shape) for k, v in outputs.items()}, "->", f.out)


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module imports cleanly elsewhere.
    flags.DEFINE_string("server", "localhost:8500", "TF Serving gRPC address.")
    flags.DEFINE_string("model_name", "toy_mixture", "Model name on the server.")
    flags.DEFINE_integer("num_samples", 16, "Samples to draw.")
    flags.DEFINE_list("seed", ["0", "1"], "Two ints: the stateless sampling seed.")
    flags.DEFINE_string("out", "samples.npy", "Where to save the samples.")
    app.run(main)
