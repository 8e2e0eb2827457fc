"""The compile artefact's key and files, the primer's fit, the reseeded warm-up, the scheduler's reservation, and the
tuning node's Mega-Cache functions against a real inductor compile on CPU."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from comfy_worker import worker as worker_module
from comfy_worker.deadline import Deadline
from comfy_worker.errors import InstanceUnavailable, JobTimedOut
from comfy_worker.fleet.compile_artifact import artifact_key, artifact_path, gpu_slug, write_sidecar
from comfy_worker.fleet.compile_rollout import CompileRollout
from comfy_worker.fleet.compiling import CompileStatus, primer_fits
from comfy_worker.fleet.instance import InstanceSpec
from comfy_worker.fleet.scheduler import Scheduler
from comfy_worker.jobs.warmup import reseeded
from comfy_worker.models.files import ModelFile
from comfy_worker.settings import load_settings
from comfy_worker.worker import Worker

NODE = Path(__file__).resolve().parents[2] / "src" / "comfyui_nodes" / "comfy_worker_tuning" / "compile_cache.py"
GIB = 1 << 30
ENV = {"gpu_name": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda": "13.0", "triton": "3.6.0", "comfyui": "0.29.0"}
OPTIONS = {"backend": "inductor", "mode": "reduce-overhead"}


def model(name: str, size: int, diffusion: bool = False) -> ModelFile:
    return ModelFile(name, Path("/models") / name, size, diffusion, size)


def test_the_artefact_key_changes_with_every_field_that_changes_compiled_code():
    files = [model("sdxl_unet.safetensors", 5 * GIB, True), model("clip_l.safetensors", GIB)]
    key = artifact_key(ENV, OPTIONS, False, files)
    assert key is not None and len(key.digest) == 16 and key.gpu_slug == "nvidia-h200"
    assert key == artifact_key(ENV, OPTIONS, False, list(reversed(files)))  # file order does not matter
    variants = [
        artifact_key({**ENV, "gpu_name": "NVIDIA H100 80GB HBM3"}, OPTIONS, False, files),
        artifact_key({**ENV, "torch": "2.10.0"}, OPTIONS, False, files),
        artifact_key({**ENV, "cuda": "12.8"}, OPTIONS, False, files),
        artifact_key({**ENV, "comfyui": "0.30.0"}, OPTIONS, False, files),
        artifact_key(ENV, {"backend": "inductor", "mode": None}, False, files),
        artifact_key(ENV, OPTIONS, True, files),
        artifact_key(ENV, OPTIONS, False, [*files, model("vae.safetensors", 100)]),
        artifact_key(ENV, OPTIONS, False, [model("sdxl_unet.safetensors", 5 * GIB + 1, True), files[1]]),
    ]
    assert len({v.digest for v in variants} | {key.digest}) == len(variants) + 1
    assert artifact_key({**ENV, "gpu_name": None}, OPTIONS, False, files) is None  # a CPU instance


def test_the_artefact_lives_under_its_gpu_type_with_a_sidecar_naming_the_key(tmp_path):
    key = artifact_key(ENV, OPTIONS, False, [model("a.safetensors", 10, True)])
    path = artifact_path(tmp_path, key)
    assert path == tmp_path / "nvidia-h200" / f"{key.digest}.megacache"
    sidecar = write_sidecar(path, key, {"bytes": 123, "entries": {"inductor": 2}})
    body = json.loads(sidecar.read_text())
    assert body["key"] == key.digest and body["gpu_name"] == "NVIDIA H200" and body["mode"] == "reduce-overhead"
    assert body["models"] == [{"name": "a.safetensors", "bytes": 10}] and body["bytes"] == 123
    assert gpu_slug("NVIDIA RTX 6000 Ada Generation") == "nvidia-rtx-6000-ada-generation"


def test_the_primer_starts_only_where_the_warmup_models_fit_beside_the_instances():
    sdxl = [model("sdxl_unet.safetensors", int(4.8 * GIB), True), model("clip_g.safetensors", int(1.3 * GIB))]
    assert primer_fits(141 * GIB, sdxl, 1)[0]
    assert not primer_fits(16 * GIB, sdxl, 1)[0]
    assert not primer_fits(141 * GIB, [model("wan14b.safetensors", 60 * GIB, True)], 1)[0]
    fits, why = primer_fits(None, sdxl, 1)
    assert not fits and "not known" in why
    assert not primer_fits(141 * GIB, [], 1)[0]  # models not found: no estimate, no primer


def test_a_reseeded_warmup_moves_every_integer_seed_and_nothing_else():
    workflow = {"1": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "model": ["2", 0]}},
                "2": {"class_type": "UNETLoader", "inputs": {"unet_name": "x"}},
                "3": {"class_type": "SamplerCustom", "inputs": {"noise_seed": 9, "add_noise": True}}}
    result = reseeded(workflow)
    assert result["1"]["inputs"] == {"seed": 6, "steps": 20, "model": ["2", 0]}
    assert result["3"]["inputs"] == {"noise_seed": 10, "add_noise": True}
    assert result["2"] is workflow["2"] and workflow["1"]["inputs"]["seed"] == 5


def test_the_compile_settings_default_to_a_shared_artefact_folder_and_the_background_compile(tmp_path):
    settings = load_settings({"COMPILE_CACHE_DIR": str(tmp_path / "cc")})
    assert settings.compile_artifact_dir == tmp_path / "cc" / "artifacts" and settings.compile_in_background
    settings = load_settings({"COMPILE_ARTIFACT_DIR": str(tmp_path / "a"), "COMPILE_IN_BACKGROUND": "0"})
    assert settings.compile_artifact_dir == tmp_path / "a" and not settings.compile_in_background


def test_a_reserved_instance_takes_no_new_job_until_released_and_waits_for_the_running_one():
    first = SimpleNamespace(label="cpu0", healthy=True, spec=InstanceSpec(0, None, 8188))
    second = SimpleNamespace(label="cpu1", healthy=True, spec=InstanceSpec(1, None, 8189))
    scheduler = Scheduler([first, second])
    events: list[str] = []
    loop = asyncio.new_event_loop()

    async def job(name: str, hold_s: float) -> str:
        async with scheduler.lease(None, 1) as lease:
            events.append(f"{name} on {lease.instance.label}")
            await asyncio.sleep(hold_s)
            return lease.instance.label

    def reserve_cpu0() -> None:
        with scheduler.reserved(0):
            events.append("reserved cpu0")
            assert scheduler.metrics[0].running == 0
            time.sleep(0.3)
            events.append("released cpu0")

    async def scenario() -> list[str]:
        running = asyncio.create_task(job("a", 0.3))  # cpu0: the reservation waits for it
        await asyncio.sleep(0.05)
        thread = threading.Thread(target=reserve_cpu0)
        thread.start()
        await asyncio.sleep(0.05)
        assert scheduler.choose(None) == 1  # cpu0 counts as busy while reserved
        labels = await asyncio.gather(running, job("b", 0.0), job("c", 0.0))
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        return labels

    labels = loop.run_until_complete(scenario())
    loop.close()
    assert labels[0] == "cpu0"
    assert events.index("reserved cpu0") > events.index("a on cpu0")
    for name in ("b", "c"):  # no job ran on cpu0 while it was reserved
        entry = next(e for e in events if e.startswith(f"{name} on"))
        assert entry.endswith("cpu1") or events.index(entry) > events.index("released cpu0")


def test_a_job_that_gets_a_reserved_instance_waits_for_the_release():
    scheduler = Scheduler([SimpleNamespace(label="cpu0", healthy=True, spec=InstanceSpec(0, None, 8188))])
    loop = asyncio.new_event_loop()
    released = threading.Event()

    def reserve() -> None:
        with scheduler.reserved(0):
            time.sleep(0.3)
            released.set()

    async def scenario() -> bool:
        thread = threading.Thread(target=reserve)
        thread.start()
        await asyncio.sleep(0.05)
        async with scheduler.lease(None, 1):
            seen = released.is_set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        return seen

    assert loop.run_until_complete(scenario()) is True
    loop.close()


@pytest.fixture(scope="module")
def compile_cache():
    spec = importlib.util.spec_from_file_location("compile_cache_under_test", NODE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_megacache_save_says_so_when_nothing_was_compiled_and_load_explains_bad_files(compile_cache, tmp_path):
    import torch

    if torch.compiler.save_cache_artifacts() is None:  # nothing compiled in this process yet
        answer = compile_cache.save(str(tmp_path / "a.megacache"))
        assert answer["saved"] is False and "nothing to save" in answer["error"]
    assert "cannot be read" in compile_cache.load(str(tmp_path / "missing.megacache"))["error"]
    (tmp_path / "junk.megacache").write_bytes(b"not an artefact")
    assert "not a compile artefact" in compile_cache.load(str(tmp_path / "junk.megacache"))["error"]
    assert "no path" in compile_cache.save("")["error"]


def test_megacache_round_trip_after_a_real_inductor_compile_on_cpu(compile_cache, tmp_path, monkeypatch):
    """A C++ compiler is on this machine, so inductor compiles for the CPU: the artefact holds that compile."""
    import torch

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    compiled = torch.compile(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), backend="inductor")
    compiled(torch.randn(2, 8))
    counters = compile_cache.counters()
    assert counters["inductor"]["fxgraph_cache_miss"] >= 1 and counters["stats"]["unique_graphs"] >= 1
    assert compile_cache.compile_seconds()["dynamo_compile_s"] > 0
    target = tmp_path / "out" / "cpu.megacache"
    saved = compile_cache.save(str(target))
    assert saved["saved"] and saved["bytes"] == target.stat().st_size > 0 and saved["entries"]["inductor"] >= 1
    assert not list(target.parent.glob("*.part"))  # written atomically: no temporary left
    loaded = compile_cache.load(str(target))
    assert loaded["loaded"] and loaded["bytes"] == saved["bytes"] and loaded["entries"] == saved["entries"]
    environment = compile_cache.environment("0.29.0")
    assert environment["torch"] == torch.__version__ and environment["gpu_name"] is None


BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_record(ready_s: float, its: list[float], compiled: bool, start_s: float = 20.0) -> dict:
    jobs = [{"its": rate, "exec_s": round(20 / rate, 3), "answered_after_start_s": start_s + 2 * n,
             "compiled": compiled} for n, rate in enumerate(its)]
    return {"ready_s": ready_s, "startup": {"instances_ready": 15.0, "warmup": ready_s - 15}, "jobs": jobs}


def test_p7c_is_the_answer_of_the_first_job_at_compiled_speed_and_only_for_compiled_jobs(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from plans.coldstart import speeds

    compiled = run_record(22.0, [12.0, 25.0, 26.0, 25.5], compiled=True)["jobs"]
    result = speeds(compiled, None)
    assert result["steady_its"] == 25.5 and result["p7c_s"] == 22.0  # the 2nd job: the 1st ran at 12 it/s
    uncompiled = run_record(18.0, [14.0, 14.5, 14.2, 14.1], compiled=False)["jobs"]
    result = speeds(uncompiled, None)
    assert "p7c_s" not in result and result["steady_exec_s"] == uncompiled[2]["exec_s"]  # the median of three
    assert result["first_minus_steady_exec_s"] == round(uncompiled[0]["exec_s"] - uncompiled[2]["exec_s"], 3)


def report_writer():
    spec = importlib.util.spec_from_file_location("coldstart_report_under_test", BENCH / "reports" / "coldstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_coldstart_report_takes_p_numbers_from_a_gpu_run_only(tmp_path):
    writer = report_writer()
    fresh = {**run_record(21.5, [20.0, 25.0, 25.2, 25.1], True), "p7c_s": 23.5, "steady_its": 25.1,
             "compile": {"instances": {"gpu0": {"artifact_loaded": True}}}}
    phases = {"fresh_with_artifact": fresh, "no_artifact": {**run_record(17.0, [14.0, 14.2], False),
                                                            "compiled_after_s": 210.0}}
    gpu_run = {"machine": {"gpus": ["NVIDIA H200"], "cpus": 16, "torch": "2.11.0"}, "args": {"cpu": False},
               "date": "2026-12-03", "command": "bench/bench.py --plan coldstart", "phases": phases}
    results = tmp_path / "results.json"
    results.write_text(json.dumps(gpu_run))
    entries = writer.write(results, tmp_path / "docs", "h200_coldstart.json", accept_dry_run=False)
    assert entries["P7"]["value"] == 21.5 and entries["P7c"]["value"] == 23.5
    assert entries["P7c"]["machine"].startswith("1× NVIDIA H200") and entries["P7c"]["command"]
    summary = json.loads((tmp_path / "docs" / "summary.json").read_text())
    assert summary["P7c"]["goal"] == "≤ 30 s" and (tmp_path / "docs" / "raw" / "h200_coldstart.json").exists()
    assert "| every cache wiped except the artefact | 21.5 |" in (tmp_path / "docs" / "coldstart.md").read_text()

    no_artifact_there = {**gpu_run, "phases": {**phases, "fresh_with_artifact": {**fresh, "compile": {}}}}
    results.write_text(json.dumps(no_artifact_there))  # the phase before left no artefact: no P-numbers
    assert writer.write(results, tmp_path / "partial", "partial.json", accept_dry_run=False) == {}
    assert "no artefact was there to load" in (tmp_path / "partial" / "coldstart.md").read_text()

    dry = {**gpu_run, "machine": {"gpus": [], "cpus": 2}, "args": {"cpu": True}}
    results.write_text(json.dumps(dry))
    assert writer.write(results, tmp_path / "dry", "dry.json", accept_dry_run=False) == {}
    assert not (tmp_path / "dry" / "summary.json").exists()
    assert "CPU dry run" in (tmp_path / "dry" / "coldstart.md").read_text()
    with pytest.raises(SystemExit, match="not written into docs/benchmarks"):
        writer.write(results, writer.DOCS, "dry.json", accept_dry_run=True)


def test_the_compiled_stream_gives_p8_against_the_same_runs_vanilla_and_only_when_every_job_answered(tmp_path):
    writer = report_writer()
    stream = {"jobs": 20, "ok": 20, "images_per_min": 70.0, "busy_pct_stream": 93.1, "instances": ["gpu0", "gpu0.1"]}
    fresh = {**run_record(21.5, [20.0, 25.0, 25.2, 25.1], True), "p7c_s": 23.5, "steady_its": 25.1, "stream": stream,
             "compile": {"instances": {"gpu0": {"artifact_loaded": True}}}}
    vanilla = {"images_per_min": 17.5, "failed": 0, "busy_pct_stream": 29.0}
    run = {"machine": {"gpus": ["NVIDIA H200"], "cpus": 16, "torch": "2.11.0"}, "args": {"cpu": False},
           "date": "2026-12-03", "command": "bench/bench.py --plan coldstart",
           "phases": {"fresh_with_artifact": fresh, "s_vanilla": vanilla}}
    results = tmp_path / "results.json"
    results.write_text(json.dumps(run))
    entries = writer.write(results, tmp_path / "docs", "h200_coldstart.json", accept_dry_run=False)
    assert entries["P8"]["value"] == 4.0 and entries["P5b"]["value"] == 93.1 and "2 instances" in entries["P8"]["what"]
    assert "| worker, 2 instance(s), compiled from the artefact | 70.0 | 93.1 | **4.0** |" in (
        tmp_path / "docs" / "coldstart.md").read_text()

    one_failed = {**run, "phases": {**run["phases"], "fresh_with_artifact": {**fresh, "stream": {**stream, "ok": 19}}}}
    results.write_text(json.dumps(one_failed))
    assert "P8" not in writer.write(results, tmp_path / "failed", "failed.json", accept_dry_run=False)
    no_vanilla = {**run, "phases": {"fresh_with_artifact": fresh}}
    results.write_text(json.dumps(no_vanilla))
    assert "P8" not in writer.write(results, tmp_path / "alone", "alone.json", accept_dry_run=False)


def test_a_job_waiting_for_a_reserved_instance_ends_at_its_deadline():
    """On a one-instance worker a job that gets the instance while it switches to compiled waits, but not past its
    own deadline: it gets the timeout error naming the switch, and the queue goes on without it."""
    scheduler = Scheduler([SimpleNamespace(label="cpu0", healthy=True, spec=InstanceSpec(0, None, 8188))])
    loop = asyncio.new_event_loop()

    async def job() -> str:
        async with scheduler.lease(None, 1, deadline=Deadline.after(0.3)):
            return "ran"

    try:
        with scheduler.reserved(0):  # held for the whole job: a switch that takes minutes
            started = time.monotonic()
            with pytest.raises(JobTimedOut, match="switches to its compiled model"):
                loop.run_until_complete(asyncio.wait_for(job(), 5))
            assert time.monotonic() - started < 2
        assert scheduler.metrics[0].running == 0 and not scheduler._locks[0].locked()
        assert loop.run_until_complete(job()) == "ran"
    finally:
        loop.close()


class PrimedRollout(CompileRollout):
    """A rollout whose primer has made its artefact (priming needs a GPU; these tests are about what follows)."""

    def prime(self, first) -> str | None:
        self.state = {"state": "switching"}
        return "made-by-the-primer.megacache"


def _gpu_instance(client: object = None) -> SimpleNamespace:
    return SimpleNamespace(label="gpu0", healthy=True, spec=InstanceSpec(0, 0, 8188),
                           compile=CompileStatus(requested=True), client=client)


def test_a_reservation_waiting_for_a_job_ends_when_the_rollout_closes():
    scheduler = Scheduler([_gpu_instance()])
    scheduler.metrics[0].running = 1  # a job's lease that never ends: its event loop is gone
    closing = threading.Event()
    threading.Timer(0.2, closing.set).start()
    started = time.monotonic()
    with pytest.raises(InstanceUnavailable, match="gpu0 was not reserved: the worker stops"), \
            scheduler.reserved(0, closing):
        pass
    assert time.monotonic() - started < 2 and scheduler.load(0) == 1  # released: only the running job counts


def test_worker_stop_ends_a_rollout_waiting_for_a_job_that_never_ends_and_waits_for_its_thread():
    instance = _gpu_instance()
    scheduler = Scheduler([instance])
    scheduler.metrics[0].running = 1  # the job's lease never ends: the rollout waits inside `reserved`
    worker = Worker(load_settings({}))
    worker.scheduler = scheduler
    worker.compile_rollout = rollout = PrimedRollout(worker.settings, SimpleNamespace(instances=[instance]),
                                                     scheduler, lambda i, n: "", 0.0)
    rollout.start()
    assert wait_for(lambda: 0 in scheduler._reserved, 5)  # inside `reserved`, waiting for the job
    started = time.monotonic()
    worker.stop()
    assert time.monotonic() - started < 2  # the reservation ended at once, not at the bound
    assert rollout.wait(0) and rollout.state["state"] == "stopped", rollout.state
    assert not instance.compile.on and 0 not in scheduler._reserved


def test_worker_stop_waits_a_bounded_time_for_a_rollout_that_does_not_end_and_says_so(monkeypatch, caplog):
    blocked = threading.Event()
    client = SimpleNamespace(load_compile_artifact=lambda path: blocked.wait(30) and {})  # an artefact load hangs
    instance = _gpu_instance(client)
    scheduler = Scheduler([instance])
    worker = Worker(load_settings({}))
    worker.compile_rollout = rollout = PrimedRollout(worker.settings, SimpleNamespace(instances=[instance]),
                                                     scheduler, lambda i, n: "", 0.0)
    monkeypatch.setattr(worker_module, "ROLLOUT_STOP_WAIT_S", 0.3)
    rollout.start()
    assert wait_for(lambda: 0 in scheduler._reserved, 5)
    try:
        started = time.monotonic()
        worker.stop()
        assert 0.3 <= time.monotonic() - started < 3
        assert "the background compile did not end within 0.3 s of the stop" in caplog.text
    finally:
        blocked.set()
    assert rollout.wait(5)


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()
