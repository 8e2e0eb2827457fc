"""INSTANCES_PER_GPU and PNG_COMPRESS_LEVEL as pure logic: the instances planned per GPU (indexes, ports, names,
folders), the `auto` decision from card and model sizes, the CPU split, each instance's share of the card, the
scheduler's `gpu` pin over several instances of one GPU, the shared-GPU offload warning, the settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from comfy_worker.errors import InstanceDied, InstanceUnavailable, InvalidInput
from comfy_worker.fleet.fleet import plan_instances
from comfy_worker.fleet.gpus import Gpu
from comfy_worker.fleet.instance import ComfyInstance, InstanceSpec
from comfy_worker.fleet.recovery import retry_reason
from comfy_worker.fleet.scheduler import Scheduler
from comfy_worker.fleet.tuning import node_request, plan_launch_tuning, shared_gpu_offload_warning
from comfy_worker.fleet.vram import GIB, instances_for_card
from comfy_worker.models.files import ModelFile
from comfy_worker.settings import SettingsError, load_settings

H200_MIB, H100_MIB, L4_MIB, RTX4090_MIB = 143771, 81559, 23034, 24564
SDXL = [ModelFile("sdxl.safetensors", Path("a"), 6_938_000_000, True, 6_938_000_000)]
WAN14B = [ModelFile("wan14b.safetensors", Path("a"), 28_577_000_000, True, 28_577_000_000),
          ModelFile("umt5.safetensors", Path("b"), 6_731_000_000, False, 6_731_000_000)]


def settings(**env: str):
    return load_settings({"COMFY_BASE_PORT": "9000", "COMFY_CPU_PINNING": "0", **env})


def test_two_instances_per_gpu_get_consecutive_indexes_ports_names_and_folders():
    specs = plan_instances(settings(INSTANCES_PER_GPU="2"), [Gpu(0, "H200", H200_MIB), Gpu(1, "H200", H200_MIB)])
    assert [(s.index, s.gpu, s.slot, s.port, s.label) for s in specs] == [
        (0, 0, 0, 9000, "gpu0"), (1, 0, 1, 9001, "gpu0.1"), (2, 1, 0, 9002, "gpu1"), (3, 1, 1, 9003, "gpu1.1")]
    instances = [ComfyInstance(spec, settings(COMFY_WORK_DIR="/w"), []) for spec in specs]
    assert [i.dirs.root for i in instances] == [Path("/w/gpu0"), Path("/w/gpu0.1"), Path("/w/gpu1"), Path("/w/gpu1.1")]


def test_one_instance_per_gpu_is_the_default_and_names_do_not_change():
    specs = plan_instances(settings(), [Gpu(0, "H200", H200_MIB), Gpu(1, "H200", H200_MIB)])
    assert [(s.index, s.gpu, s.port, s.label) for s in specs] == [(0, 0, 9000, "gpu0"), (1, 1, 9001, "gpu1")]


def test_cpu_only_machines_ignore_instances_per_gpu():
    specs = plan_instances(settings(INSTANCES_PER_GPU="2", COMFY_CPU_INSTANCES="3"), [])
    assert [s.label for s in specs] == ["cpu0", "cpu1", "cpu2"]
    assert [s.label for s in plan_instances(settings(INSTANCES_PER_GPU="2", COMFY_MULTI_GPU_SCHED="0"),
                                            [Gpu(0, "H200", H200_MIB), Gpu(1, "H200", H200_MIB)])] == ["gpu0", "gpu0.1"]


@pytest.mark.parametrize(("card_mib", "files", "count"), [
    (H100_MIB, SDXL, 2),    # 2 × (6.5 × 1.15 + 4 + 0.75) = 24.4 GiB of 0.9 × 79.6
    (RTX4090_MIB, SDXL, 1),  # 24.4 GiB needed, 0.9 × 24 GiB usable: the twin would risk out of memory
    (L4_MIB, SDXL, 1),      # 24.4 GiB needed, 0.9 × 22.5 GiB usable
    (H200_MIB, WAN14B, 2),  # 2 × 41.8 GiB of 140
    (H100_MIB, WAN14B, 1),  # 83.6 GiB needed, 79.6 GiB card
    (H200_MIB, [], 1),      # no warm-up models known
])
def test_auto_runs_two_only_where_the_warmup_models_fit_twice(card_mib, files, count):
    chosen, reason = instances_for_card("auto", card_mib << 20, files)
    assert chosen == count, reason
    specs = plan_instances(settings(INSTANCES_PER_GPU="auto"), [Gpu(0, "card", card_mib)], files)
    assert len(specs) == count


def test_auto_says_why():
    assert instances_for_card("auto", H200_MIB << 20, []) == (1, "no warm-up models known")
    count, reason = instances_for_card("auto", L4_MIB << 20, SDXL)
    assert count == 1 and re.search(r"need 24\.4 GiB of 20\.2 GiB usable: one instance", reason)
    assert instances_for_card("2", 8 * GIB, WAN14B) == (2, "set by INSTANCES_PER_GPU")  # forced: the user's call


def test_instances_of_one_gpu_split_its_cores_and_its_memory():
    tunings = plan_launch_tuning(settings(COMFY_CPU_PINNING="1"), [Gpu(0, "H100", H100_MIB)], [0, 0], WAN14B)
    first, second = tunings
    if first.cpu_set and second.cpu_set and first.cpu_set.cpus:
        assert set(first.cpu_set.cpus).isdisjoint(second.cpu_set.cpus)
    # Wan 14B fits one H100 (41.8 GiB) but not half of it: each instance offloads
    assert [t.vram.mode for t in tunings] == ["dynamic", "dynamic"]
    (alone,) = plan_launch_tuning(settings(), [Gpu(0, "H100", H100_MIB)], [0], WAN14B)
    assert alone.vram.mode == "high"


def _scheduler(gpus: int, per_gpu: str) -> Scheduler:
    s = settings(INSTANCES_PER_GPU=per_gpu, COMFY_WORK_DIR="/w")
    instances = [ComfyInstance(spec, s, []) for spec in plan_instances(s, [Gpu(i, "H200", H200_MIB)
                                                                              for i in range(gpus)])]
    for instance in instances:
        instance.healthy = True
    return Scheduler(instances)


def test_a_gpu_pin_picks_the_less_loaded_instance_of_that_gpu():
    scheduler = _scheduler(2, "2")
    assert scheduler.choose(0) == 0 and scheduler.choose(1) == 2
    scheduler.metrics[0].running = 1
    assert scheduler.choose(0) == 1  # gpu0 is busy: gpu0.1
    scheduler.metrics[1].queue_length = 2
    assert scheduler.choose(0) == 0
    scheduler.instances[0].healthy = False
    assert scheduler.choose(0) == 1
    assert scheduler.choose(None) == 2  # unpinned: the least loaded of all four


def test_a_pinned_retry_goes_to_the_sibling_of_the_failed_instance_and_never_to_another_gpu():
    scheduler = _scheduler(2, "2")
    assert scheduler.choose(0, avoid=frozenset({0})) == 1  # gpu0 failed: gpu0.1, although gpu0 is less loaded
    scheduler.metrics[0].running = 1
    assert scheduler.choose(0, avoid=frozenset({1})) == 0  # the avoided one only when no sibling is healthy
    scheduler.instances[0].healthy = False
    assert scheduler.choose(0, avoid=frozenset({1})) == 1
    scheduler.instances[1].healthy = False
    with pytest.raises(InstanceUnavailable, match="not healthy"):  # never gpu1's instances
        scheduler.choose(0, avoid=frozenset({0, 1}))


def test_a_pinned_job_whose_instance_died_runs_again_only_where_its_pin_names_a_healthy_sibling():
    died = InstanceDied("exited", outputs_seen=False)
    on = settings()
    assert retry_reason(died, on, "gpu0", pinned=True, retried=False) is None  # one instance per GPU: no sibling
    reason = retry_reason(died, on, "gpu0", pinned=True, retried=False, pinned_siblings=["gpu0.1"])
    assert reason is not None and "on another instance of the GPU it pins (gpu0.1)" in reason
    assert "on another instance where one was healthy" in retry_reason(died, on, "gpu0", False, False)
    assert retry_reason(died, on, "gpu0", True, retried=True, pinned_siblings=["gpu0.1"]) is None  # once only
    assert retry_reason(InstanceDied("exited", outputs_seen=True), on, "gpu0", True, False, ["gpu0.1"]) is None
    assert retry_reason(died, settings(RETRY_LOST_JOBS="0"), "gpu0", True, False, ["gpu0.1"]) is None


def test_a_gpu_pin_out_of_range_or_on_a_gpu_without_healthy_instances_says_so():
    scheduler = _scheduler(2, "2")
    with pytest.raises(InvalidInput, match=re.escape("'gpu': 2 is out of range: this worker runs 2 GPU(s) "
                                                     "(4 instance(s)), numbered 0 to 1")):
        scheduler.choose(2)
    for instance in scheduler.instances[:2]:
        instance.healthy = False
    with pytest.raises(InstanceUnavailable, match=r"'gpu': 0 pins gpu0, gpu0\.1, which are not healthy now"):
        scheduler.choose(0)
    assert [m["instance"] for m in scheduler.snapshot()] == ["gpu0", "gpu0.1", "gpu1", "gpu1.1"]
    assert [m["gpu"] for m in scheduler.snapshot()] == [0, 0, 1, 1]


def test_a_gpu_pin_on_one_instance_per_gpu_or_on_cpu_instances_means_that_instance():
    scheduler = _scheduler(3, "1")
    assert [scheduler.choose(pin) for pin in range(3)] == [0, 1, 2]
    s = settings(COMFY_CPU_INSTANCES="2", COMFY_WORK_DIR="/w")
    cpu = Scheduler([ComfyInstance(spec, s, []) for spec in plan_instances(s, [])])
    for instance in cpu.instances:
        instance.healthy = True
    assert cpu.choose(1) == 1
    with pytest.raises(InvalidInput, match=re.escape("this worker runs 2 CPU instance(s), numbered 0 to 1")):
        cpu.choose(2)


def test_an_instance_that_offloads_beside_a_sibling_warns_the_job():
    spec = InstanceSpec(1, 0, 9001, 1)
    warning = shared_gpu_offload_warning(spec, "dynamic", ["gpu0"])
    assert warning and warning.startswith("gpu0.1 offloads this job's models (dynamic VRAM mode) while gpu0 shares "
                                          "GPU 0") and "INSTANCES_PER_GPU=1" in warning
    assert shared_gpu_offload_warning(spec, "high", ["gpu0"]) is None
    assert shared_gpu_offload_warning(InstanceSpec(0, 0, 9000), "dynamic", []) is None


def test_png_compress_level_is_sent_to_every_instance_and_checked():
    assert node_request(settings(), on_gpu=False)["png_compress_level"] == 1  # measured: docs/benchmarks/stream.md
    assert node_request(settings(PNG_COMPRESS_LEVEL="1"), on_gpu=True)["png_compress_level"] == 1
    for bad, message in (("10", "PNG_COMPRESS_LEVEL=10 is not a zlib level"),
                         ("-1", "PNG_COMPRESS_LEVEL='-1' must be at least 0"), ("fast", "is not a number")):
        with pytest.raises(SettingsError, match=re.escape(message)):
            settings(PNG_COMPRESS_LEVEL=bad)
    with pytest.raises(SettingsError, match=re.escape("INSTANCES_PER_GPU='3' is not one of auto, 1, 2")):
        settings(INSTANCES_PER_GPU="3")
