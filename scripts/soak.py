"""Soak: many model-free jobs through RunPod's local API (`handler.py --rp_serve_api`) from concurrent clients,
every answer checked, memory and disk sampled.

    python scripts/soak.py --jobs 1000 --clients 4 --instances 2 --out soak.json        # what `make test` runs
    python scripts/soak.py --seconds 3600 --clients 4 --instances 2 --out docs/reliability/soak_1h.json --plot

Each job inverts a small image of a colour no other job uses, so an answer is checked to be this job's own: one
PNG whose pixels are the inverse of the job's colour. A job is lost when it gets no such answer; duplicated when
its prompt id or its colour comes back in another job's answer. Memory is the resident set of the worker process
and every ComfyUI instance under it, sampled every `--sample-every` finished jobs, with the disk use of the
worker's folders. Exits 1 when a job was lost or duplicated.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from cpu_worker_env import worker_env  # noqa: E402  (scripts/: the environment the tests give the worker too)

COLOUR_STEP = 2654435761  # odd, so index → index × step mod 2^24 never repeats a colour below 2^24 jobs


def colour_of(index: int) -> int:
    return (index * COLOUR_STEP) % (1 << 24)


def invert_job(index: int) -> dict[str, Any]:
    return {"input": {"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                     "color": colour_of(index)}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "soak"}},
    }}}


def near(colour: int, other: int) -> bool:
    """ComfyUI's float round trip (EmptyImage → ImageInvert → 8-bit PNG) may leave a channel 1 off."""
    return all(abs((colour >> shift & 0xFF) - (other >> shift & 0xFF)) <= 1 for shift in (0, 8, 16))


def check_answer(index: int, payload: dict[str, Any]) -> tuple[str | None, int | None]:
    """(what is wrong or None, the colour the answer holds)."""
    from PIL import Image

    if payload.get("status") != "COMPLETED":
        return f"status {payload.get('status')}: {str(payload.get('error'))[:300]}", None
    images = (payload.get("output") or {}).get("images") or []
    if len(images) != 1 or images[0].get("type") != "base64":
        return f"expected one base64 image, got {len(images)}", None
    image = Image.open(io.BytesIO(base64.b64decode(images[0]["data"]))).convert("RGB")
    red, green, blue = image.getpixel((0, 0))
    held = 0xFFFFFF - ((red << 16) | (green << 8) | blue)
    if not near(held, colour_of(index)):
        return f"the answer holds colour {held:06x}, not this job's {colour_of(index):06x}", held
    return None, held


def process_tree_rss_mib(root: int) -> dict[int, float]:
    """Resident MiB of `root` and each of its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier += children
    rss = {}
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return rss


def disk_mib(folder: Path) -> float:
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(directory) / name).stat().st_size
            except OSError:
                continue
    return total / 2**20


@dataclass
class Tally:
    results: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_index: int = 0

    def take(self) -> int:
        with self.lock:
            self.next_index += 1
            return self.next_index - 1


def start_api(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen, str]:
    port = args.port
    env = {**os.environ, **worker_env(Path(args.comfyui_dir), work / "instances", args.instances),
           "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "LOG_LEVEL": "WARNING"}
    log = open(work / "worker.log", "w")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{url}/docs", timeout=1).status_code == 200:
                return process, url
        except requests.RequestException:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the local API did not come up; see {work / 'worker.log'}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work or tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    process, url = start_api(args, work)
    tally = Tally()
    started = time.monotonic()
    stop = threading.Event()

    def more() -> bool:
        if args.seconds:
            return time.monotonic() - started < args.seconds
        return tally.next_index < args.jobs

    def sample() -> None:
        rss = process_tree_rss_mib(process.pid)
        tally.samples.append({"t_s": round(time.monotonic() - started, 1), "jobs_done": len(tally.results),
                              "worker_rss_mib": round(rss.get(process.pid, 0), 1),
                              "instances_rss_mib": round(sum(v for k, v in rss.items() if k != process.pid), 1),
                              "processes": len(rss), "disk_mib": round(disk_mib(work / "instances"), 2)})

    def client() -> None:
        session = requests.Session()
        while more() and not stop.is_set():
            index = tally.take()
            sent = time.monotonic()
            try:
                response = session.post(f"{url}/runsync", json=invert_job(index), timeout=args.job_timeout_s)
                payload = response.json()
                problem, held = check_answer(index, payload)
            except Exception as error:  # a lost answer is what the soak counts, not a reason to stop
                payload, problem, held = {}, f"{type(error).__name__}: {error}", None
            output = payload.get("output") or {}
            with tally.lock:
                tally.results.append({"index": index, "s": round(time.monotonic() - sent, 3), "problem": problem,
                                      "colour": held, "instance": output.get("instance"),
                                      "prompt_id": output.get("prompt_id")})
                done = len(tally.results)
            if done % args.sample_every == 0:
                sample()

    sample()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        stop.set()
    sample()
    wall = time.monotonic() - started
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
    return summarise(tally, wall, args)


def summarise(tally: Tally, wall: float, args: argparse.Namespace) -> dict[str, Any]:
    results = tally.results
    failed = [r for r in results if r["problem"]]
    prompt_ids = [r["prompt_id"] for r in results if r["prompt_id"]]
    sent = {colour_of(r["index"]): r["index"] for r in results}
    crossed = [r for r in results if r["problem"] and r["colour"] is not None
               and any(near(r["colour"], colour) and index != r["index"] for colour, index in sent.items())]
    per_instance: dict[str, int] = {}
    for result in results:
        per_instance[result["instance"] or "none"] = per_instance.get(result["instance"] or "none", 0) + 1
    steady = [s for s in tally.samples if s["jobs_done"] >= args.sample_every]
    first, last = (steady[0], steady[-1]) if steady else (tally.samples[0], tally.samples[-1])

    def growth(key: str) -> float | None:
        return round(last[key] / first[key] - 1, 4) if first[key] else None

    durations = sorted(r["s"] for r in results)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    return {
        "commit": commit.stdout.strip() or None, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
        "jobs": len(results), "seconds": round(wall, 1), "clients": args.clients, "instances": args.instances,
        "jobs_per_s": round(len(results) / wall, 2),
        "lost": len(failed), "lost_examples": failed[:5],
        "duplicated": len(prompt_ids) - len(set(prompt_ids)), "given_another_jobs_answer": len(crossed),
        "per_instance": per_instance,
        "job_s_median": durations[len(durations) // 2] if durations else None,
        "job_s_max": durations[-1] if durations else None,
        "growth_from": first, "growth_to": last,
        "rss_growth": growth("worker_rss_mib"), "instances_rss_growth": growth("instances_rss_mib"),
        "disk_growth": growth("disk_mib"),
        "samples": tally.samples,
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = summary["samples"]
    minutes = [s["t_s"] / 60 for s in samples]
    figure, (memory, jobs) = plt.subplots(1, 2, figsize=(10, 3.6))
    memory.plot(minutes, [s["worker_rss_mib"] for s in samples], label="worker process")
    memory.plot(minutes, [s["instances_rss_mib"] for s in samples], label=f"{summary['instances']} ComfyUI instances")
    memory.set_xlabel("minutes")
    memory.set_ylabel("resident MiB")
    memory.set_ylim(bottom=0)
    memory.legend()
    memory.set_title("Memory")
    jobs.plot(minutes, [s["jobs_done"] for s in samples], color="#2a7")
    jobs.set_xlabel("minutes")
    jobs.set_ylabel("jobs answered and checked")
    jobs.set_title(f"{summary['jobs']} jobs, {summary['lost']} lost, "
                   f"{summary['duplicated'] + summary['given_another_jobs_answer']} duplicated")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    from comfy_worker.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=0, help="run for this long instead of --jobs")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--instances", type=int, default=2, help="CPU instances")
    parser.add_argument("--port", type=int, default=8390, help="the local API's port")
    parser.add_argument("--comfyui-dir", default=str(load_settings().comfyui_dir))
    parser.add_argument("--work", default="", help="the worker's folders (default: a new temporary folder)")
    parser.add_argument("--sample-every", type=int, default=100, help="jobs between memory samples")
    parser.add_argument("--job-timeout-s", type=float, default=120)
    parser.add_argument("--out", required=True, help="the summary, as JSON")
    parser.add_argument("--plot", action="store_true", help="also draw OUT with .png (needs matplotlib)")
    args = parser.parse_args()
    summary = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    if args.plot:
        plot(summary, Path(args.out).with_suffix(".png"))
    brief = {k: v for k, v in summary.items() if k not in ("samples", "lost_examples", "growth_from", "growth_to")}
    print(json.dumps(brief))
    sys.exit(1 if summary["lost"] or summary["duplicated"] or summary["given_another_jobs_answer"] else 0)


if __name__ == "__main__":
    main()
