"""The compile endpoints of the tuning node, the switch to compiled and the prime command, on real CPU instances
(compile itself runs on GPU instances only: here the node's endpoints and the worker's state machine are driven)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import make_job, worker_env
from workflows import invert

from comfy_worker.fleet.compile_rollout import CompileRollout
from comfy_worker.jobs.job_input import parse_job_input
from comfy_worker.prime import PrimeError, prime
from comfy_worker.settings import load_settings

pytestmark = pytest.mark.comfyui

MAKE_ARTEFACT = textwrap.dedent("""
    import sys, torch
    compiled = torch.compile(torch.nn.Linear(4, 4), backend="inductor")
    compiled(torch.randn(2, 4))
    open(sys.argv[1], "wb").write(torch.compiler.save_cache_artifacts()[0])
""")


def test_the_compile_report_answers_counters_versions_and_no_compiled_model(worker):
    report = worker.fleet.instances[0].client.compile_report()
    assert report["compiled_models"] == 0 and report["models"] == [] and report["compile"] is None
    assert isinstance(report["counters"], dict) and "dynamo_compile_s" in report["compile_seconds"]
    environment = report["environment"]
    assert environment["gpu_name"] is None and environment["comfyui"] == "0.29.0" and environment["torch"]


def test_save_and_load_answer_errors_as_json_and_the_instance_keeps_serving(worker, run, tmp_path):
    client = worker.fleet.instances[0].client
    saved = client.save_compile_artifact(str(tmp_path / "none.megacache"))
    assert saved["saved"] is False and "nothing to save" in saved["error"]
    missing = client.load_compile_artifact(str(tmp_path / "missing.megacache"))
    assert missing["loaded"] is False and "cannot be read" in missing["error"]
    (tmp_path / "junk.megacache").write_bytes(b"junk")
    assert "not a compile artefact" in client.load_compile_artifact(str(tmp_path / "junk.megacache"))["error"]
    result = run(worker.handle(make_job(invert(), gpu=0)))
    assert "error" not in result, result
    assert result["tuning"]["compiled"] is False and result["tuning"]["compile"] is None  # CPU: never compiled


def test_a_real_artefact_loads_into_an_instance(worker, tmp_path):
    """An artefact made by another process (inductor on CPU) fills the instance's caches."""
    artefact = tmp_path / "cpu.megacache"
    subprocess.run([sys.executable, "-c", MAKE_ARTEFACT, str(artefact)], check=True, timeout=280,
                   env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    loaded = worker.fleet.instances[1].client.load_compile_artifact(str(artefact))
    assert loaded["loaded"] is True and loaded["bytes"] == artefact.stat().st_size and loaded["entries"]["inductor"]


def test_an_instance_is_switched_to_compiled_and_reports_it_and_a_bad_artefact_leaves_it_uncompiled(
    worker, run, tmp_path
):
    instance = worker.fleet.instances[1]
    status, switches = instance.compile, instance.switches
    settings = dataclasses.replace(worker.settings, torch_compile="inductor")  # what a GPU worker would request
    rollout = CompileRollout(settings, worker.fleet, worker.scheduler, worker.warm_up_instance, 0.0)
    try:
        instance.compile = type(status)(requested=True)  # as a GPU instance that started without an artefact
        assert rollout.pending() == [instance]
        assert rollout.switch(instance, str(tmp_path / "missing.megacache")) is False
        assert not instance.compile.on and "cannot be read" in instance.compile.load["error"]
        assert worker.scheduler.load(1) == 0  # the reservation is released

        artefact = tmp_path / "cpu.megacache"
        subprocess.run([sys.executable, "-c", MAKE_ARTEFACT, str(artefact)], check=True, timeout=280,
                       env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
        assert rollout.switch(instance, str(artefact)) is True
        assert instance.compile.on and instance.compile.load["loaded"]
        assert instance.compile.report["compile"] == {"backend": "inductor", "mode": "reduce-overhead"}
        assert "✓ Enabled torch.compile of diffusion models on load (backend inductor, mode reduce-overhead)" \
            in instance.switches["applied"]
        result = run(worker.handle(make_job(invert(color=0x123457), gpu=1)))
        assert "error" not in result, result
        assert result["tuning"]["compiled"] is True and result["tuning"]["compile"]["artifact_loaded"] is True
    finally:
        instance.compile = status
        instance.switches = instance.client.apply_tuning({"tf32": False, "cudnn_benchmark": False, "compile": None})
        assert switches.get("compile") is None  # the shared instance is back as the other tests expect it


def test_prime_needs_a_warmup_workflow_and_a_gpu(comfyui_dir, tmp_path):
    with pytest.raises(PrimeError, match="WARMUP_WORKFLOW is not set"):
        prime(load_settings(worker_env(comfyui_dir, tmp_path, instances=1)))
    settings = load_settings(worker_env(comfyui_dir, tmp_path, instances=1, WARMUP_WORKFLOW=json.dumps(invert())))
    with pytest.raises(PrimeError, match="no GPU instance to compile on"):
        prime(settings)


def test_the_prime_command_prints_its_error_as_json_and_exits_1(comfyui_dir, tmp_path):
    env = {**worker_env(comfyui_dir, tmp_path, instances=1), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "comfy_worker.prime"], capture_output=True, text=True, timeout=60,
                          env={**env, "PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 1 and "WARMUP_WORKFLOW is not set" in json.loads(done.stdout.splitlines()[-1])["error"]


def test_an_instance_without_its_artefact_starts_uncompiled_only_where_a_background_compile_follows(worker):
    """Fleet._compile_now with the real node answering (a CPU instance reports no GPU, so no artefact is found)."""
    fleet, instance = worker.fleet, worker.fleet.instances[0]
    options = {"backend": "inductor", "mode": None}
    saved = fleet.settings
    try:
        fleet.settings = dataclasses.replace(saved, warmup_workflow="{}", compile_in_background=True)
        assert fleet._compile_now(instance, options) is False  # serves uncompiled; the primer compiles
        assert instance.compile.artifact is None and not instance.compile.load
        fleet.settings = dataclasses.replace(saved, warmup_workflow="{}", compile_in_background=False)
        assert fleet._compile_now(instance, options) is True  # compiles in the warm-up, as before
        fleet.settings = dataclasses.replace(saved, warmup_workflow="", compile_in_background=True)
        assert fleet._compile_now(instance, options) is True  # no warm-up: nothing could compile in the background
    finally:
        fleet.settings = saved


def test_the_primer_runs_the_warmup_in_a_process_of_its_own_and_ends(worker):
    """The primer's whole path on a CPU instance: launched beside the instances, switched to compile, warmed up,
    asked to save (a CPU process has no GPU, so no artefact), stopped; the instances are untouched."""
    settings = dataclasses.replace(worker.settings, torch_compile="inductor")
    ran = []

    def warm_up(instance, new_seeds):
        ran.append((instance.label, new_seeds))
        return worker._warm_up_one(instance, parse_job_input({"workflow": invert(prefix="primer")}))

    rollout = CompileRollout(settings, worker.fleet, worker.scheduler, warm_up, 0.0)
    assert rollout.prime(worker.fleet.instances[0]) is None
    assert "does not fit" in rollout.state["reason"] and "not known" in rollout.state["reason"] and not ran

    assert rollout.run_primer(worker.fleet.instances[0]) is None
    assert ran == [("primer", False)]
    assert rollout.state["warm_up"].startswith("primer ") and "failed" not in rollout.state["warm_up"]
    assert rollout.state["report"]["compile"] == {"backend": "inductor", "mode": "reduce-overhead"}
    assert rollout.state["state"] == "uncompiled" and "has no GPU" in rollout.state["reason"]
    with pytest.raises(ProcessLookupError):
        os.kill(rollout.state["primer_pid"], 0)  # stopped and reaped
    assert all(i.healthy for i in worker.fleet.instances)
    assert not any((worker.settings.work_dir / "primer" / "output").rglob("*.png"))  # removed like a job's outputs


def test_a_primer_whose_warmup_fails_says_why_and_is_stopped(worker):
    """The primer's warm-up failed (here ComfyUI refuses the workflow): the rollout's state names the failure and
    keeps the primer's last log lines, the primer is stopped, the instances serve on."""
    settings = dataclasses.replace(worker.settings, torch_compile="inductor")
    pids = []

    def warm_up(primer, new_seeds):
        pids.append(primer.pid)
        return worker._run_warm_up(primer, parse_job_input({"workflow": {"1": {"class_type": "NoSuchNode",
                                                                               "inputs": {}}}}))

    rollout = CompileRollout(settings, worker.fleet, worker.scheduler, warm_up, 0.0)
    assert rollout.run_primer(worker.fleet.instances[0]) is None
    assert rollout.state["state"] == "uncompiled", rollout.state
    reason = rollout.state["reason"]
    assert reason.startswith("the primer's warm-up failed: ") and "NoSuchNode" in reason
    assert "invalid prompt" in rollout.state["log_tail"]  # the primer's own last lines
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    assert all(i.healthy for i in worker.fleet.instances)


def test_a_stop_while_the_primer_runs_kills_it_and_is_reported_as_a_stop_not_a_failure(worker):
    """The worker stopped while its primer compiled (as on a GPU, where priming takes minutes): the primer is killed
    at once and the rollout says it was stopped, not that the primer failed."""
    settings = dataclasses.replace(worker.settings, torch_compile="inductor")
    pids = []

    def warm_up(primer, new_seeds):
        pids.append(primer.pid)
        rollout.stop()  # Worker.stop() from another thread, while the primer's warm-up runs
        return worker._warm_up_one(primer, parse_job_input({"workflow": invert(prefix="primer")}))

    rollout = CompileRollout(settings, worker.fleet, worker.scheduler, warm_up, 0.0)
    assert rollout.run_primer(worker.fleet.instances[0]) is None
    assert rollout.state["state"] == "stopped", rollout.state
    assert "failed" not in json.dumps(rollout.state)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    assert all(i.healthy for i in worker.fleet.instances)


def test_an_instance_that_dies_during_its_switch_stays_uncompiled_and_the_rollout_goes_on(worker, tmp_path):
    """The instance died while it switched (between its artefact's load and its compile report): that switch is
    given up and the reservation released; the rollout does not end for the other instances."""
    instance = worker.fleet.instances[0]
    status = instance.compile
    settings = dataclasses.replace(worker.settings, torch_compile="inductor")

    def warm_up(switched, new_seeds):
        switched.kill_hung()  # a crash during the compiled warm-up
        switched._process.wait(10)
        return f"{switched.label} failed"

    rollout = CompileRollout(settings, worker.fleet, worker.scheduler, warm_up, 0.0)
    artefact = tmp_path / "cpu.megacache"
    subprocess.run([sys.executable, "-c", MAKE_ARTEFACT, str(artefact)], check=True, timeout=280,
                   env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    try:
        instance.compile = type(status)(requested=True)
        assert rollout.switch(instance, str(artefact)) is False
        assert worker.scheduler.load(0) == 0  # the reservation is released
        assert "did not answer" in rollout.state["switch_failed"][instance.label]  # said, not only logged
    finally:
        instance.compile = status


def test_an_instance_restarting_when_the_rollout_starts_is_switched_once_it_is_back(worker, tmp_path):
    """cpu1 was restarting (not healthy) when the rollout began and is back once the primer has made the artefact:
    the rollout switches it too (here the artefact is unreadable, so each instance tries it and stays uncompiled)."""
    first, second = worker.fleet.instances
    statuses = first.compile, second.compile
    artefact = str(tmp_path / "made-by-the-primer.megacache")

    class PrimedRollout(CompileRollout):
        def prime(self, first_pending):
            assert first_pending is first and not second.healthy
            second.healthy = True  # its restart ended while the primer compiled
            self.state = {"state": "switching"}
            return artefact

    rollout = PrimedRollout(dataclasses.replace(worker.settings, torch_compile="inductor"), worker.fleet,
                            worker.scheduler, worker.warm_up_instance, 0.0)
    try:
        first.compile, second.compile = type(statuses[0])(requested=True), type(statuses[1])(requested=True)
        second.healthy = False  # restarting when the rollout starts
        rollout.run()
        tried = {i.label: (i.compile.artifact, i.compile.load.get("error", "")) for i in (first, second)}
    finally:
        second.healthy = True
        first.compile, second.compile = statuses
    assert rollout.state["state"] == "done", rollout.state
    assert all(path == artefact and "cannot be read" in error for path, error in tried.values()), tried
    assert worker.scheduler.load(0) == worker.scheduler.load(1) == 0  # both reservations released
