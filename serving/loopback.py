"""A PredictionService for an exported SavedModel on a loopback port: what TF Serving does
with a gRPC PredictRequest (each input converted to the signature's dtype, the signature
called, a failed in-graph check returned as INVALID_ARGUMENT), for tests and the load
benchmark on machines where TF Serving itself cannot run.

    server, port = serve("runs/toy_edm/export/toy_edm/16000", max_workers=4)
"""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def signature_inputs(signature, raw: dict) -> dict:
    """Each named input converted to the signature's dtype, as TF Serving does."""
    specs = signature.structured_input_signature[1]
    return {k: tf.constant(np.asarray(v), dtype=specs[k].dtype) for k, v in raw.items()}


class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, loaded):
        self._loaded = loaded

    def Predict(self, request, context):
        name = request.model_spec.signature_name or "serving_default"
        if name not in self._loaded.signatures:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no signature {name!r}")
        sig = self._loaded.signatures[name]
        raw = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        try:
            out = sig(**signature_inputs(sig, raw))
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, getattr(e, "message", str(e)))
        response = predict_pb2.PredictResponse()
        for k, v in out.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
        return response


def serve(path: str, max_workers: int = 1) -> tuple[grpc.Server, int]:
    """Start the service for the SavedModel at ``path`` on 127.0.0.1 (a free port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        Service(tf.saved_model.load(path)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
