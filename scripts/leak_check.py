"""Where the worker process's Python memory grows: the soak's jobs run in this process (Worker.handle, as the handler
calls it, two CPU instances), with a tracemalloc snapshot after a warm-up and another after more jobs; the biggest
growths are printed with their call sites. A leak grows with the job count; a bounded cache or log tail stops at its
size (docs/reliability.md, "The hour").

    python scripts/leak_check.py --warm-jobs 3000 --jobs 8000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from cpu_worker_env import worker_env  # noqa: E402
from soak import invert_job  # noqa: E402

from comfy_worker.logs import configure  # noqa: E402
from comfy_worker.settings import load_settings  # noqa: E402
from comfy_worker.worker import Worker  # noqa: E402

CONCURRENT = 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm-jobs", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=8000)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    configure("WARNING")
    settings = load_settings(worker_env(load_settings().comfyui_dir, Path(tempfile.mkdtemp()), instances=2))
    worker = Worker(settings, gpus=[])
    worker.start()
    if worker.startup_error:
        raise SystemExit(worker.startup_error)
    loop = asyncio.new_event_loop()
    done = 0

    async def batch(indices: range) -> list[dict]:
        return await asyncio.gather(*(worker.handle({**invert_job(i), "id": f"leak-{i}"}) for i in indices))

    def run(count: int) -> None:
        nonlocal done
        for start in range(done, done + count, CONCURRENT):
            results = loop.run_until_complete(batch(range(start, start + CONCURRENT)))
            failed = [result for result in results if "error" in result]
            if failed:
                raise SystemExit(f"a job failed: {failed[0]['error']}")
        done += count

    try:
        run(args.warm_jobs)
        gc.collect()
        tracemalloc.start(6)
        before = tracemalloc.take_snapshot()
        started = time.monotonic()
        run(args.jobs)
        gc.collect()
        after = tracemalloc.take_snapshot()
        growth = after.compare_to(before, "traceback")
        print(f"{args.jobs} jobs after {args.warm_jobs} in {time.monotonic() - started:.0f} s: Python memory "
              f"{sum(stat.size_diff for stat in growth) / 1024:+.1f} KiB in all")
        for stat in growth[:args.top]:
            print(f"{stat.size_diff / 1024:+8.1f} KiB {stat.count_diff:+6d} objects")
            for line in stat.traceback.format()[-4:]:
                print("        ", line)
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
