"""The GPU benchmark: every performance number in docs/benchmarks/ comes from here.

    python bench/bench.py --plan flags  --comfy DIR --models DIR --out DIR [--deadline S]   # one GPU
    python bench/bench.py --plan worker --comfy DIR --models DIR --out DIR [--deadline S]   # two GPUs
    python bench/bench.py --plan stream --comfy DIR --models DIR --out DIR [--deadline S]   # one GPU, issue 15
    python bench/bench.py --plan regress --comfy DIR --models DIR --out DIR [--deadline S]  # one GPU, issue 15
    python bench/bench.py --plan smoke  ...  --cpu                                           # a CPU dry run

`flags` compares ComfyUI configurations on one GPU, each instance started the way the worker starts it
(src/comfy_worker/instance.py) and jobs posted straight to it: vanilla defaults, the best uncompiled
configuration known before, ours, each switch of the tuning node toggled on the same instance, the allocator,
torch.compile with a cold and a warm cache (P4, P5, P6).
`coldstart` measures start → ready and start → compiled speed with and without a compile artefact (P7, P7c).
`worker` drives the worker itself (comfy_worker.worker.Worker.handle, the handler's only call) with jobs
submitted concurrently as RunPod does: 1 vs 2 GPUs (P1), through the worker vs straight to ComfyUI (P2), host
RAM per extra instance (P3), CPU pinning on and off, VRAM modes, warm-up and cold start (P6, P7).
`stream` submits a stream of concurrent SDXL jobs on one GPU to vanilla ComfyUI and to the worker in four
configurations (1 or 2 instances per GPU, PNG compression 1 or the default), with a GPU busy timeline (P8, P5b).
`regress` checks that nothing regressed on one GPU: P2, P6 and memory per instance with the worker's defaults
(compiled), two instances on the GPU and one.
Results go to OUT/results.json as each phase ends (a later phase failing keeps the earlier ones);
bench/report.py turns them into docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from plans.coldstart import plan_coldstart
from plans.flags import plan_flags
from plans.models import plan_models
from plans.p2probe import plan_p2probe
from plans.regress import plan_regress
from plans.scaling import plan_scaling
from plans.stream import plan_stream
from plans.worker import plan_worker
from runner import Bench

log = logging.getLogger("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", required=True,
                        choices=("flags", "worker", "smoke", "p2probe", "scaling", "models", "stream", "coldstart",
                                 "regress"))
    parser.add_argument("--comfy", required=True, help="the ComfyUI folder")
    parser.add_argument("--models", required=True, help="MODELS_DIR of bench/make_models.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/bench-work")
    parser.add_argument("--fe", default="", help="--front-end-root for ComfyUI (where the frontend is absent)")
    parser.add_argument("--jobs", type=int, default=6, help="jobs per measurement (per GPU in the worker plan)")
    parser.add_argument("--deadline", type=float, default=540)
    parser.add_argument("--compile-modes", default="default", help="torch.compile modes to try; empty: none")
    parser.add_argument("--cpu", action="store_true", help="a dry run on CPU instances with tiny shapes")
    parser.add_argument("--phases", default="", help="run only these phases (comma-separated names)")
    parser.add_argument("--soak-s", type=float, default=300, help="scaling plan: each concurrent run's length")
    parser.add_argument("--soak-caches", default="classic",
                        help="scaling plan: a concurrent run on all GPUs for each of these COMFY_CACHE values")
    parser.add_argument("--stream-jobs", type=int, default=20,
                        help="stream plan: jobs submitted at once in each phase (a --cpu dry run caps it at 2)")
    parser.add_argument("--keep-compile-cache", action="store_true", help="start from the compile cache on disk")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    comfy_log = logging.getLogger("comfy_worker.comfyui")  # ComfyUI's own lines go to a file of their own
    comfy_log.propagate = False
    Path(args.out).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(args.out) / "comfyui.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    comfy_log.addHandler(handler)
    worker_lines = logging.FileHandler(Path(args.out) / "worker.log")  # the rest, unfiltered (stdout is grepped)
    worker_lines.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(worker_lines)
    bench = Bench(args)
    try:
        if args.plan in ("flags", "smoke"):
            plan_flags(bench)
        if args.plan in ("worker", "smoke"):
            plan_worker(bench)
        if args.plan == "p2probe":
            plan_p2probe(bench)
        if args.plan == "scaling":
            plan_scaling(bench)
        if args.plan == "models":
            plan_models(bench)
        if args.plan == "stream":
            plan_stream(bench)
        if args.plan == "coldstart":
            plan_coldstart(bench)
        if args.plan == "regress":
            plan_regress(bench)
    finally:
        bench.results["total_s"] = round(time.monotonic() - bench.started, 1)
        (bench.out / "results.json").write_text(json.dumps(bench.results, indent=1, default=str))
        log.info("done in %.0f s; %d errors", bench.results["total_s"], len(bench.results["errors"]))


if __name__ == "__main__":
    main()
