"""Pure logic of the GPU tuning: CPU partitioning, VRAM mode, slow-path warnings, model affinity, warm-up input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_worker.errors import InvalidInput
from comfy_worker.fleet.cpu_layout import compact, gpu_numa_node, numa_node_cpus, parse_cpulist, plan_cpu_sets
from comfy_worker.fleet.gpus import Gpu
from comfy_worker.fleet.scheduler import least_loaded
from comfy_worker.fleet.tuning import node_request, plan_launch_tuning
from comfy_worker.fleet.vram import GIB, choose_vram_mode, model_roots
from comfy_worker.jobs.report import phase_of
from comfy_worker.jobs.warmup import load_warmup_workflow
from comfy_worker.models.affinity import models_in
from comfy_worker.settings import load_settings

H200_MIB = 143771


def test_cpu_sets_split_evenly_and_leave_the_worker_its_cores():
    sets = plan_cpu_sets(range(32), [None, None], {}, worker_cpus=1, max_threads=4)
    assert [s.cpus for s in sets] == [tuple(range(0, 15)), tuple(range(15, 30))]
    assert all(s.threads == 4 for s in sets)
    assert 31 not in sets[1].cpus


def test_cpu_sets_follow_the_numa_node_of_each_gpu():
    numa = {0: list(range(0, 16)), 1: list(range(16, 32))}
    sets = plan_cpu_sets(range(32), [1, 0, 1, 0], numa, worker_cpus=2, max_threads=8)
    assert sets[0].cpus == tuple(range(16, 23)) and sets[2].cpus == tuple(range(23, 30))
    assert sets[1].cpus == tuple(range(0, 8)) and sets[3].cpus == tuple(range(8, 16))
    assert all(set(s.cpus).isdisjoint(t.cpus) for s in sets for t in sets if s is not t)


def test_cpu_sets_fall_back_to_an_even_split_when_a_node_is_short_or_unknown():
    numa = {0: [0, 1], 1: list(range(2, 32))}
    sets = plan_cpu_sets(range(32), [0, 0, 0], numa, worker_cpus=1, max_threads=4)
    assert [len(s.cpus) for s in sets] == [10, 10, 10]
    tiny = plan_cpu_sets([0, 1], [None, None], {}, worker_cpus=4, max_threads=4)
    assert [s.cpus for s in tiny] == [(0,), (1,)]  # every instance keeps a core before the worker takes one
    assert plan_cpu_sets(range(8), [], {}, 1, 4) == []


def test_cpulists_round_trip():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert compact([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"


def test_numa_node_of_a_gpu_is_read_from_sysfs(tmp_path: Path):
    device = tmp_path / "bus/pci/devices/0000:18:00.0"
    device.mkdir(parents=True)
    (device / "numa_node").write_text("1\n")
    node = tmp_path / "devices/system/node/node1"
    node.mkdir(parents=True)
    (node / "cpulist").write_text("16-31\n")
    assert gpu_numa_node("00000000:18:00.0", tmp_path) == 1
    assert gpu_numa_node("00000000:19:00.0", tmp_path) is None
    (device / "numa_node").write_text("-1\n")
    assert gpu_numa_node("00000000:18:00.0", tmp_path) is None
    assert numa_node_cpus(tmp_path) == {1: list(range(16, 32))}


def test_auto_vram_mode_keeps_models_resident_where_they_fit():
    sdxl = int(6.6 * GIB)
    assert choose_vram_mode("auto", H200_MIB << 20, sdxl).flags == ("--highvram",)
    assert choose_vram_mode("auto", 8 * GIB, sdxl).mode == "dynamic"
    assert choose_vram_mode("auto", 24 * GIB, 0).mode == "high"  # no models on disk yet: a large card
    assert choose_vram_mode("auto", 12 * GIB, 0).mode == "dynamic"
    assert choose_vram_mode("auto", None, sdxl).mode == "dynamic"
    assert choose_vram_mode("normal", 8 * GIB, sdxl).flags == ("--disable-dynamic-vram",)


def test_model_roots_come_from_extra_model_paths_files(tmp_path: Path):
    config = tmp_path / "extra.yaml"
    config.write_text("volume:\n  base_path: /runpod-volume/models  # the volume\n  checkpoints: checkpoints\n"
                      "local:\n  base_path: 'relative/models'\n")
    roots = model_roots(Path("/opt/ComfyUI"), [config, tmp_path / "absent.yaml"])
    assert roots == [Path("/opt/ComfyUI/models"), Path("/runpod-volume/models"), tmp_path / "relative/models"]


def test_launch_tuning_for_gpu_and_cpu_instances():
    settings = load_settings({"COMFY_CPU_PINNING": "0", "COMPILE_CACHE_DIR": "/cache"})
    gpu, cpu = plan_launch_tuning(settings, [Gpu(0, "H200", H200_MIB)], [0, None])
    assert gpu.flags == ("--highvram", "--disable-cuda-malloc") and gpu.cpu_set is None
    assert gpu.env["TORCHINDUCTOR_CACHE_DIR"] == "/cache/inductor"
    assert cpu.flags == () and cpu.env == {}
    custom = load_settings({"COMFY_EXTRA_ARGS": "--lowvram --cuda-malloc", "COMFY_CPU_PINNING": "0"})
    (user,) = plan_launch_tuning(custom, [Gpu(0, "H200", H200_MIB)], [0])
    assert user.flags == () and user.vram.mode == "custom"  # ComfyUI refuses two VRAM flags: the user's wins


def test_compile_is_on_by_default_only_with_a_warmup():
    assert node_request(load_settings({}), on_gpu=True)["compile"] is None
    warm = load_settings({"WARMUP_WORKFLOW": "{}"})
    assert node_request(warm, on_gpu=True)["compile"] == {"backend": "inductor", "mode": "reduce-overhead"}
    assert node_request(warm, on_gpu=False)["compile"] is None
    assert node_request(load_settings({"TORCH_COMPILE": "off", "WARMUP_WORKFLOW": "{}"}), True)["compile"] is None
    assert node_request(load_settings({"TORCH_COMPILE": "inductor", "TORCH_COMPILE_MODE": "default"}), True)[
        "compile"] == {"backend": "inductor", "mode": None}
    with_async = load_settings({"TORCH_COMPILE": "inductor", "COMFY_CUDA_MALLOC": "async"})
    assert node_request(with_async, True)["compile"] == {"backend": "inductor", "mode": None}  # no CUDA graphs


def test_job_phases_come_from_node_classes():
    assert phase_of("UNETLoader", False) == "model_load_ms"
    assert phase_of("LoraLoaderModelOnly", False) == "model_load_ms"
    assert phase_of("KSamplerAdvanced", False) == "sampling_ms"
    assert phase_of("SomeCustomNode", True) == "sampling_ms"  # it reported steps
    assert phase_of("VAEDecodeTiled", False) == "vae_decode_ms"
    assert phase_of("SaveImage", False) == "save_ms"
    assert phase_of("CLIPTextEncode", False) == "other_nodes_ms"


def test_model_affinity_breaks_ties_between_equally_loaded_instances():
    workflow = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl/base.safetensors"}},
                "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors", "model": ["1", 0]}},
                "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a file.safetensors? no: prose"}}}
    assert models_in(workflow) == {"sdxl/base.safetensors", "style.safetensors"}
    assert least_loaded([(0, True, 0), (1, True, 0)], {1: 2}) == 1
    assert least_loaded([(0, True, 0), (1, True, 1)], {1: 2}) == 0  # load first: affinity never queues a job


def test_warmup_workflow_from_a_file_or_inline(tmp_path: Path):
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    path = tmp_path / "warmup.json"
    path.write_text(json.dumps({"workflow": workflow}))
    assert load_warmup_workflow(str(path)) == workflow
    assert load_warmup_workflow(json.dumps(workflow)) == workflow
    assert load_warmup_workflow("") is None
    with pytest.raises(InvalidInput, match="cannot be read"):
        load_warmup_workflow(str(tmp_path / "missing.json"))
    with pytest.raises(InvalidInput, match="not valid JSON"):
        load_warmup_workflow("{not json")


def test_fast_load_is_asked_of_gpu_instances_only_and_can_be_turned_off():
    assert node_request(load_settings({}), on_gpu=True)["fast_load"] == {"threads": 8}
    assert node_request(load_settings({"FAST_MODEL_LOAD_THREADS": "3"}), on_gpu=True)["fast_load"] == {"threads": 3}
    assert node_request(load_settings({}), on_gpu=False)["fast_load"] is None
    assert node_request(load_settings({"FAST_MODEL_LOAD_THREADS": "0"}), on_gpu=True)["fast_load"] is None
