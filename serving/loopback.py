"""A PredictionService for an exported SavedModel on a loopback port: what TF Serving does
with a gRPC PredictRequest (each input converted to the signature's dtype, the signature
called, a failed in-graph check returned as INVALID_ARGUMENT), for tests and the load
benchmark on machines where TF Serving itself cannot run.

    server, port = serve("runs/toy_edm/export/toy_edm/16000", max_workers=4)

Every input is checked before anything is allocated for it: its name against the
signature's, the shape its TensorProto declares against the signature's ``TensorSpec``
(a free leading dimension at most the export's batch cap, from its ``limits`` signature),
the proto's bytes or its number of values against that shape (TensorFlow would fill a
short value field with zeros or its last value). A value that does not fit the signature's dtype
(an int64 of 2**32 + 4 for an int32, 4.5 for an int, 1e39 for a float32) is refused, not
wrapped. All of these are INVALID_ARGUMENT with a message naming the input.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

#: the largest free leading dimension of an input when the export has no ``limits``
DEFAULT_MAX_BATCH = 1024


class RequestError(ValueError):
    """A request the service refuses before allocating for it (INVALID_ARGUMENT)."""


def batch_cap(loaded) -> int:
    """The largest free leading dimension an input may declare: the export's batch cap
    (``max_score_batch`` or ``max_batch`` of its ``limits``)."""
    if "limits" not in loaded.signatures:
        return DEFAULT_MAX_BATCH
    caps = loaded.signatures["limits"](unused=tf.constant(0))
    return max((int(v.numpy()) for k, v in caps.items() if "batch" in k),
               default=DEFAULT_MAX_BATCH)  # fmt: skip


def check_proto(name: str, proto, spec: tf.TensorSpec, max_batch: int) -> None:
    """RequestError unless the TensorProto ``proto`` declares a tensor ``spec`` accepts, at
    most ``max_batch`` long in a free dimension, with the bytes its shape needs."""
    if proto.tensor_shape.unknown_rank:
        raise RequestError(f"input {name!r} must declare its shape {spec.shape}")
    dims = [d.size for d in proto.tensor_shape.dim]
    want = spec.shape.as_list()
    if len(dims) != len(want) or any(
        d < 0 or (w is not None and d != w) or (w is None and d > max_batch)
        for d, w in zip(dims, want, strict=False)
    ):
        free = f"; a free dimension at most {max_batch}" if None in want else ""
        raise RequestError(f"input {name!r} must have shape {spec.shape}{free}, not {dims}")
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError as e:
        raise RequestError(f"input {name!r} has no valid dtype ({proto.dtype})") from e
    count = int(np.prod(dims, dtype=np.int64))
    if proto.tensor_content and len(proto.tensor_content) != count * dtype.size:
        raise RequestError(
            f"input {name!r} is malformed: {len(proto.tensor_content)} bytes of tensor_content "
            f"for shape {dims} of {dtype.name}"
        )
    field = _VALUE_FIELDS.get(dtype.base_dtype)
    carried = len(getattr(proto, field)) if field else count
    if not proto.tensor_content and carried != count:
        # TensorFlow fills a short value field (zeros, or the last value repeated): refused
        raise RequestError(
            f"input {name!r} carries {carried} value(s) in {field} for shape {dims}, which "
            f"needs {count}: send every value"
        )


#: the TensorProto field that carries the values of each dtype (when not tensor_content)
_VALUE_FIELDS = {
    tf.float32: "float_val", tf.float64: "double_val", tf.int32: "int_val",
    tf.int16: "int_val", tf.int8: "int_val", tf.uint8: "int_val", tf.uint16: "int_val",
    tf.int64: "int64_val", tf.bool: "bool_val", tf.string: "string_val",
    tf.float16: "half_val", tf.bfloat16: "half_val", tf.uint32: "uint32_val",
    tf.uint64: "uint64_val",
}  # fmt: skip


def _fits(value: np.ndarray, dtype: tf.DType) -> bool:
    """Whether ``value`` converts to ``dtype`` without wrapping, truncation or overflow."""
    if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
        return not (dtype.is_floating or dtype.is_integer)
    if dtype.is_integer:
        if value.dtype.kind == "f" and not np.all(np.isfinite(value) & (np.mod(value, 1) == 0)):
            return False
        info = np.iinfo(dtype.as_numpy_dtype)
        return bool(value.size == 0 or (value.min() >= info.min and value.max() <= info.max))
    if dtype.is_floating:
        with np.errstate(over="ignore"):
            cast = value.astype(dtype.as_numpy_dtype)
        return bool(np.all(np.isfinite(cast) | ~np.isfinite(value)))
    return True


def convert(name: str, value, spec: tf.TensorSpec) -> tf.Tensor:
    """``value`` as a tensor of the signature's dtype (TF Serving converts as well), or
    RequestError if it does not fit in that dtype."""
    value = np.asarray(value)
    if not _fits(value, spec.dtype):
        shown = repr(value.item()) if value.size == 1 else f"a {value.dtype} array"
        raise RequestError(
            f"input {name!r} must be {spec.dtype.name}: {shown} does not fit (out of range, "
            "not a whole number or not a number; refused, not wrapped)"
        )
    return tf.constant(value, dtype=spec.dtype)


def _specs(signature) -> dict:
    return signature.structured_input_signature[1]


def _names_checked(signature_name: str, specs: dict, given) -> None:
    unknown, missing = sorted(set(given) - set(specs)), sorted(set(specs) - set(given))
    if unknown or missing:
        what = "; ".join(
            [f"unknown input(s) {', '.join(unknown)}"] * bool(unknown)
            + [f"missing input(s) {', '.join(missing)}"] * bool(missing)
        )
        raise RequestError(f"{what}: signature {signature_name!r} takes {', '.join(sorted(specs))}")


def signature_inputs(signature, raw: dict, name: str = "serving_default") -> dict:
    """Each named input converted to the signature's dtype, as TF Serving does (RequestError
    for names the signature does not take and values that do not fit its dtypes)."""
    specs = _specs(signature)
    _names_checked(name, specs, raw)
    return {k: convert(k, v, specs[k]) for k, v in raw.items()}


def request_inputs(signature, name: str, protos, max_batch: int) -> dict:
    """The tensors of a PredictRequest's inputs, every proto checked before it is decoded."""
    specs = _specs(signature)
    _names_checked(name, specs, protos)
    inputs = {}
    for k, proto in protos.items():
        check_proto(k, proto, specs[k], max_batch)
        try:
            value = tf.make_ndarray(proto)
        except (TypeError, ValueError) as e:
            raise RequestError(f"input {k!r} is malformed: {e}") from e
        inputs[k] = convert(k, value, specs[k])
    return inputs


def status_message(e: Exception) -> str:
    """The line a client is told: a failed in-graph check's ``assertion failed: [...]`` line
    (what TF Serving's status carries first, without the node it names and the Python
    runtime's "Graph execution error" preamble), else the error's message."""
    message = getattr(e, "message", str(e))
    lines = [ln for ln in message.splitlines() if ln.startswith("assertion failed:")]
    return lines[0] if lines else message


class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, loaded):
        self._loaded = loaded
        self._max_batch = batch_cap(loaded)

    def Predict(self, request, context):
        name = request.model_spec.signature_name or "serving_default"
        if name not in self._loaded.signatures:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no signature {name!r}")
        sig = self._loaded.signatures[name]
        try:
            out = sig(**request_inputs(sig, name, request.inputs, self._max_batch))
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, status_message(e))
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
