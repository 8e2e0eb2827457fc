"""Unit tests: settings, instance planning and command line, routing, output finding, delivery choice, error text,
per-job workflow rewriting, progress throttling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from comfy_worker.comfy.client import describe_rejection
from comfy_worker.comfy.workflow_rewrite import isolate_outputs, user_subfolder
from comfy_worker.delivery.deliver import base64_size, choose_mode
from comfy_worker.delivery.outputs import find_outputs
from comfy_worker.errors import DeliveryFailed
from comfy_worker.fleet.fleet import plan_instances
from comfy_worker.fleet.gpus import Gpu
from comfy_worker.fleet.instance import InstanceDirs, InstanceSpec, build_command
from comfy_worker.fleet.scheduler import least_loaded
from comfy_worker.jobs.progress import ProgressReporter
from comfy_worker.settings import REPO_ROOT, VARIABLES, SettingsError, load_settings

GPUS = [Gpu(i, "H200", 143771) for i in range(4)]


def test_defaults_need_no_environment():
    settings = load_settings({})
    assert settings.output_mode == "auto" and settings.s3 is None and settings.num_gpus is None
    assert settings.base_port == 8188 and settings.multi_gpu and settings.output_inline_limit_bytes == 10_000_000


@pytest.mark.parametrize(("env", "message"), [
    ({"COMFY_NUM_GPUS": "two"}, "COMFY_NUM_GPUS='two' is not a number"),
    ({"COMFY_MULTI_GPU_SCHED": "maybe"}, "not a switch"),
    ({"OUTPUT_MODE": "ftp"}, "OUTPUT_MODE='ftp'"),
    ({"BUCKET_ENDPOINT_URL": "http://127.0.0.1:9000"}, "BUCKET_ACCESS_KEY_ID"),
    ({"BUCKET_ENDPOINT_URL": "http://127.0.0.1:9000", "BUCKET_ACCESS_KEY_ID": "a",
      "BUCKET_SECRET_ACCESS_KEY": "b"}, "set BUCKET_NAME"),
    ({"COMFY_VRAM_MODE": "huge"}, "COMFY_VRAM_MODE='huge' is not one of auto, high"),
    ({"COMFY_CUDA_MALLOC": "jemalloc"}, "COMFY_CUDA_MALLOC='jemalloc' is not one of native, async"),
    ({"TORCH_COMPILE": "tensorrt"}, "TORCH_COMPILE='tensorrt' is not one of auto, off, inductor"),
    ({"TORCH_COMPILE_MODE": "fast"}, "TORCH_COMPILE_MODE='fast' is not one of reduce-overhead"),
    ({"COMFY_CACHE": "lru:0"}, "COMFY_CACHE='lru:0' is not one of classic, ram, none or lru:N"),
    ({"COMFY_CACHE": "forever"}, "COMFY_CACHE='forever' is not one of"),
    ({"COMFY_HOST": "0.0.0.0"}, "COMFY_HOST='0.0.0.0' is not a loopback address"),
    ({"COMFY_HOST": "10.1.2.3"}, "COMFY_HOST='10.1.2.3' is not a loopback address"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(env)


def test_every_variable_is_documented_and_every_documented_variable_exists():
    page = (REPO_ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", page, flags=re.MULTILINE))
    assert documented == {v.name for v in VARIABLES}


def test_the_settings_module_is_the_only_reader_of_the_environment():
    package = REPO_ROOT / "src" / "comfy_worker"
    readers = {p.relative_to(package).as_posix() for p in package.rglob("*.py")
               if re.search(r"os\.environ|os\.getenv", p.read_text())}
    instance = next(package.rglob("instance.py"))
    assert readers, "the settings package reads the environment: the search must find it"
    # settings/ reads it; instance.py passes the environment on to ComfyUI
    assert readers <= {"settings/reader.py", instance.relative_to(package).as_posix()}, readers
    assert "os.environ.get" not in instance.read_text()


def test_one_instance_per_gpu_limited_and_rolled_back():
    assert [s.gpu for s in plan_instances(load_settings({}), GPUS)] == [0, 1, 2, 3]
    assert [s.port for s in plan_instances(load_settings({}), GPUS)] == [8188, 8189, 8190, 8191]
    assert [s.gpu for s in plan_instances(load_settings({"COMFY_NUM_GPUS": "2"}), GPUS)] == [0, 1]
    assert [s.gpu for s in plan_instances(load_settings({"COMFY_MULTI_GPU_SCHED": "0"}), GPUS)] == [0]


def test_cpu_instances_without_gpus():
    specs = plan_instances(load_settings({"COMFY_CPU_INSTANCES": "2"}), [])
    assert [(s.gpu, s.label) for s in specs] == [(None, "cpu0"), (None, "cpu1")]
    assert len(plan_instances(load_settings({"COMFY_NUM_GPUS": "0", "COMFY_CPU_INSTANCES": "3"}), GPUS)) == 3
    assert len(plan_instances(load_settings({"COMFY_CPU_INSTANCES": "3", "COMFY_MULTI_GPU_SCHED": "0"}), [])) == 1


def test_each_instance_gets_its_gpu_port_and_own_folders():
    settings = load_settings({"COMFY_EXTRA_ARGS": "--highvram --reserve-vram 1"})
    dirs = InstanceDirs(Path("/w/gpu1"))
    command = build_command(InstanceSpec(1, 1, 8189), settings, dirs, [Path("/v/extra.yaml")])
    joined = " ".join(command)
    assert "--listen 127.0.0.1 --port 8189" in joined and "--cuda-device 1" in joined and "--cpu" not in command
    for flag, path in [("--user-directory", "/w/gpu1/user"), ("--input-directory", "/w/gpu1/input"),
                       ("--output-directory", "/w/gpu1/output"), ("--temp-directory", "/w/gpu1"),
                       ("--database-url", "sqlite:////w/gpu1/comfyui.db"),
                       ("--extra-model-paths-config", "/v/extra.yaml")]:
        assert command[command.index(flag) + 1] == path
    assert command[-3:] == ["--highvram", "--reserve-vram", "1"]


@pytest.mark.parametrize(("cache", "extra", "expected"), [
    ("", "", ["--cache-classic"]),  # ComfyUI's own default keeps every job's outputs until RAM runs short
    ("ram", "", []),
    ("none", "", ["--cache-none"]),
    ("lru:8", "", ["--cache-lru", "8"]),
    ("classic", "--cache-lru 3", ["--cache-lru", "3"]),  # the user's own cache flag wins: ComfyUI allows one
])
def test_cache_flag(cache, extra, expected):
    settings = load_settings({"COMFY_CACHE": cache, "COMFY_EXTRA_ARGS": extra})
    command = build_command(InstanceSpec(0, None, 8188), settings, InstanceDirs(Path("/w/cpu0")), [])
    assert [arg for i, arg in enumerate(command)
            if arg.startswith("--cache") or command[i - 1] == "--cache-lru"] == expected


def test_least_loaded_healthy_instance_wins():
    assert least_loaded([(0, True, 2), (1, True, 0), (2, True, 1)]) == 1
    assert least_loaded([(0, True, 1), (1, False, 0)]) == 0
    assert least_loaded([(0, True, 1), (1, True, 1)]) == 0
    assert least_loaded([(0, False, 0)]) is None


def test_outputs_of_every_kind_are_found_and_previews_skipped():
    history = {
        "9": {"images": [{"filename": "a.png", "subfolder": "job-x", "type": "output"},
                         {"filename": "p.png", "subfolder": "", "type": "temp"}]},
        "10": {"images": [{"filename": "v.mp4", "subfolder": "job-x/vid", "type": "output"}], "animated": [True]},
        "11": {"gifs": [{"filename": "g.webm", "subfolder": "job-x", "type": "output", "format": "video/webm"}]},
        "12": {"audio": [{"filename": "s.flac", "subfolder": "job-x/audio", "type": "output"}]},
        "13": {"text": ["hello"]},
        "14": {"images": [{"filename": "w.webp", "subfolder": "job-x", "type": "output"}], "animated": [True]},
    }
    files, texts = find_outputs(history, include_previews=False, job_folder="job-x")
    found = {(f.kind, f.name, f.animated) for f in files}
    assert found == {("images", "a.png", False), ("videos", "vid/v.mp4", False), ("gifs", "g.webm", False),
                     ("audio", "audio/s.flac", False), ("images", "w.webp", True)}
    assert [(t.node_id, t.text) for t in texts] == [("13", "hello")]
    files, _ = find_outputs(history, include_previews=True, job_folder="job-x")
    assert any(f.folder_type == "temp" for f in files)


def test_an_output_cannot_point_outside_its_folder():
    files, _ = find_outputs({"1": {"images": [{"filename": "x", "subfolder": "../../etc", "type": "output"}]}},
                            include_previews=False)
    with pytest.raises(ValueError, match="outside"):
        files[0].path_in(InstanceDirs(Path("/w/cpu0")))


def test_every_filename_prefix_goes_under_the_job_folder():
    workflow = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "me/pic"}},
                "2": {"class_type": "VHS_VideoCombine", "inputs": {"filename_prefix": "clip"}},
                "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": ["5", 0]}}}
    rewritten = isolate_outputs(workflow, "job-1")
    assert rewritten["1"]["inputs"]["filename_prefix"] == "job-1/me/pic"
    assert rewritten["2"]["inputs"]["filename_prefix"] == "job-1/clip"
    assert rewritten["3"]["inputs"]["filename_prefix"] == ["5", 0]
    assert workflow["1"]["inputs"]["filename_prefix"] == "me/pic"  # the user's workflow is untouched
    assert user_subfolder("job-1/me", "job-1") == "me" and user_subfolder("job-1", "job-1") == ""


def test_delivery_mode_follows_size_and_bucket():
    assert choose_mode("auto", 1_000, 10_000_000, has_bucket=False) == "base64"
    assert choose_mode("auto", 20_000_000, 10_000_000, has_bucket=True) == "s3"
    with pytest.raises(DeliveryFailed, match="configure a bucket"):
        choose_mode("auto", 20_000_000, 10_000_000, has_bucket=False)
    with pytest.raises(DeliveryFailed, match="no bucket is configured"):
        choose_mode("s3", 1, 10_000_000, has_bucket=False)
    assert choose_mode("base64", 20_000_000, 10_000_000, has_bucket=True) == "base64"
    assert base64_size(3) == 4 and base64_size(4) == 8


def test_validation_errors_become_readable_lines():
    payload = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
               "node_errors": {"4": {"class_type": "CheckpointLoaderSimple", "errors": [
                   {"type": "value_not_in_list", "message": "Value not in list", "details": "...",
                    "extra_info": {"input_name": "ckpt_name", "received_value": "x.safetensors"}}]}}}
    choices = {"ckpt_name": [f"m{i}.safetensors" for i in range(25)]}
    lines = describe_rejection(payload, {}, lambda cls, name: choices[name])
    assert lines == ["node 4 (CheckpointLoaderSimple): ckpt_name 'x.safetensors' not in list; available: "
                     + ", ".join(f"m{i}.safetensors" for i in range(20)) + ", … 5 more"]
    assert describe_rejection({"error": {"message": "No outputs", "details": "add a Save node"}}, {}) == [
        "No outputs: add a Save node"]


def test_progress_is_throttled_and_names_the_gpu(monkeypatch):
    sent = []
    clock = iter([0.0, 0.3, 1.2, 1.5, 2.4])
    monkeypatch.setattr("comfy_worker.jobs.progress.time.monotonic", lambda: next(clock))
    reporter = ProgressReporter({"id": "j"}, "gpu1", 1.0, lambda job, payload: sent.append(payload))
    for step in range(5):
        reporter({"node": "3", "step": step, "steps": 5})
    assert [p["step"] for p in sent] == [0, 2, 4] and all(p["gpu"] == "gpu1" for p in sent)


def test_a_job_queued_for_an_instance_that_became_unhealthy_is_given_another():
    import asyncio
    from types import SimpleNamespace

    from comfy_worker.fleet.scheduler import Scheduler

    first = SimpleNamespace(label="cpu0", healthy=True, spec=InstanceSpec(0, None, 8188))
    second = SimpleNamespace(label="cpu1", healthy=False, spec=InstanceSpec(1, None, 8189))
    scheduler = Scheduler([first, second])

    async def scenario():
        holder_in, holder_out = asyncio.Event(), asyncio.Event()

        async def holder():
            async with scheduler.lease(None, 1) as lease:
                holder_in.set()
                await holder_out.wait()
                return lease.instance.label

        held = asyncio.create_task(holder())
        await holder_in.wait()
        waiting = asyncio.create_task(scheduler.lease(None, 1).__aenter__())
        await asyncio.sleep(0.05)  # queued for cpu0, the only healthy one
        first.healthy, second.healthy = False, True  # cpu0 died while the job queued; cpu1 came back
        holder_out.set()
        await held
        return (await waiting).instance.label

    assert asyncio.run(scenario()) == "cpu1"


def test_a_job_with_a_deadline_stops_waiting_in_the_queue():
    import asyncio
    from types import SimpleNamespace

    from comfy_worker.deadline import Deadline
    from comfy_worker.errors import JobTimedOut
    from comfy_worker.fleet.scheduler import Scheduler

    scheduler = Scheduler([SimpleNamespace(label="cpu0", healthy=True, spec=InstanceSpec(0, None, 8188))])

    async def scenario():
        async with scheduler.lease(None, 1):
            with pytest.raises(JobTimedOut, match=r"timeout of 0\.2 s while waiting in the queue of cpu0 \(1 job"):
                async with scheduler.lease(None, 1, deadline=Deadline.after(0.2)):
                    pass

    asyncio.run(scenario())


def test_a_patient_client_waits_longer_only_inside_the_block_and_never_less_than_usual():
    from comfy_worker.comfy.client import ComfyClient

    client = ComfyClient("http://127.0.0.1:1", "gpu0", poll_timeout_s=30)
    with client.patient(300):
        assert client.poll_timeout_s == 300
    assert client.poll_timeout_s == 30
    with client.patient(5):
        assert client.poll_timeout_s == 30
    with pytest.raises(RuntimeError), client.patient(300):
        raise RuntimeError("the warm-up failed")
    assert client.poll_timeout_s == 30
