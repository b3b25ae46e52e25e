"""A bounded load test of an exported model behind the loopback gRPC PredictionService
(serving/loopback.py): CLIENTS threads send requests for DURATION seconds, each a valid
``sample`` request (its answer checked against the same request answered alone before the
load: same seed, same samples) or, one in OVER_EVERY, a request over the export's work cap
(``sample_annealed_langevin`` with the most samples and more steps per level than the cap
allows: it must be refused with INVALID_ARGUMENT; export with
``--export_samplers=...,annealed_langevin``). The server's resident memory is sampled every
second. Only 127.0.0.1 is contacted; the loop stops by itself.

    python benchmarks/serving_load.py --export=runs/toy_edm/export/toy_edm/16000 \\
        --clients=8 --duration=60 --num_samples=64

Writes runs/bench/serving_load.json: requests answered and refused, wrong answers (must be
0), latency percentiles, requests/s, RSS at start, peak and end, and the CPU flags.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "serving"))
sys.path.insert(0, REPO)

EXPORT = flags.DEFINE_string("export", None, "Version directory of an exported score model.")
CLIENTS = flags.DEFINE_integer("clients", 8, "Concurrent client threads.")
DURATION = flags.DEFINE_float("duration", 60.0, "Seconds of load.")
NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "num_samples of each valid request.")
SEEDS = flags.DEFINE_integer("seeds", 8, "Distinct seeds (answers checked against a baseline).")
OVER_EVERY = flags.DEFINE_integer("over_every", 5, "Every k-th request asks for too much work.")
WORKERS = flags.DEFINE_integer("server_threads", 4, "gRPC server worker threads.")
OUT = flags.DEFINE_string("out", "runs/bench/serving_load.json", "Output JSON.")


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    with open("/proc/cpuinfo") as f:
        have = set(next((ln for ln in f if ln.startswith("flags")), "").split())
    return [w for w in wanted if w in have]


def _client(channel, baseline, limits, stop, record, k0):
    import grpc
    import grpc_client

    k = k0
    while not stop.is_set():
        k += 1
        over = k % OVER_EVERY.value == 0
        seed = [k % SEEDS.value, 0]
        n = limits["max_samples"] if over else NUM_SAMPLES.value
        # over max_evaluations whatever the grid: max_samples x (N x steps + 1) > the cap
        steps = limits["max_evaluations"] // limits["max_samples"] + 1 if over else None
        t0 = time.perf_counter()
        try:
            if over:  # the most samples and steps at once: over max_evaluations
                req = grpc_client.sample_request("m", n, seed, signature="sample_annealed_langevin")
                grpc_client.add_inputs(req, n_steps_each=np.int32(steps),
                                       step_lr=np.float32(0.05))  # fmt: skip
            else:
                req = grpc_client.sample_request("m", n, seed)
            out = grpc_client.predict(channel, req)
            ok = (not over) and np.array_equal(out["samples"], baseline[seed[0]])
            record("answered" if ok else "wrong", time.perf_counter() - t0)
        except grpc.RpcError as e:
            refused = over and e.code() == grpc.StatusCode.INVALID_ARGUMENT
            record("refused" if refused else "error", time.perf_counter() - t0, e.details())


def main(argv):
    del argv
    import grpc
    import grpc_client
    import loopback
    import psutil

    me = psutil.Process()
    server, port = loopback.serve(EXPORT.value, max_workers=WORKERS.value)
    results = {"answered": [], "refused": [], "wrong": [], "error": []}
    errors, lock, stop, rss = [], threading.Lock(), threading.Event(), []

    def record(kind, seconds, detail=None):
        with lock:
            results[kind].append(seconds)
            if detail and kind == "error" and len(errors) < 5:
                errors.append(detail)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        limits_req = grpc_client.sample_request("m", 1, [0, 0], signature="limits")
        del limits_req.inputs["num_samples"], limits_req.inputs["seed"]
        grpc_client.add_inputs(limits_req, unused=np.int32(0))
        limits = {k: v.item() for k, v in grpc_client.predict(channel, limits_req).items()}
        baseline = {
            s: grpc_client.predict(channel, grpc_client.sample_request("m", NUM_SAMPLES.value,
                                                                       [s, 0]))["samples"]
            for s in range(SEEDS.value)
        }  # fmt: skip
        rss_start = me.memory_info().rss
        args = (channel, baseline, limits, stop, record)
        threads = [
            threading.Thread(target=_client, args=(*args, i * 1000)) for i in range(CLIENTS.value)
        ]
        t0 = time.time()
        for t in threads:
            t.start()
        while time.time() - t0 < DURATION.value:
            time.sleep(1.0)
            rss.append(me.memory_info().rss)
        stop.set()
        for t in threads:
            t.join(600)
        wall = time.time() - t0
    server.stop(None)
    lat = np.asarray(results["answered"]) * 1000
    report = {
        "export": EXPORT.value, "clients": CLIENTS.value, "duration_s": wall,
        "num_samples": NUM_SAMPLES.value, "limits": limits, "cpu_flags": _cpu_flags(),
        **{k: len(v) for k, v in results.items()},
        "requests_per_s": len(lat) / wall,
        "samples_per_s": len(lat) * NUM_SAMPLES.value / wall,
        "latency_ms_p50_p90_p99": [float(np.percentile(lat, q)) for q in (50, 90, 99)]
        if len(lat) else None,
        "rss_mb_start_peak_end": [rss_start / 2**20, max(rss) / 2**20, rss[-1] / 2**20],
        "rss_mb_first_last_quarter": [float(np.mean(rss[: max(1, len(rss) // 4)])) / 2**20,
                                      float(np.mean(rss[-max(1, len(rss) // 4):])) / 2**20],
        "error_messages": errors,
    }  # fmt: skip
    os.makedirs(os.path.dirname(OUT.value) or ".", exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "limits"}, indent=1))
    if report["wrong"] or report["error"] or not report["answered"] or not report["refused"]:
        sys.exit("load test FAILED: wrong answers, errors, or no answered / refused requests")


if __name__ == "__main__":
    flags.mark_flag_as_required("export")
    app.run(main)
