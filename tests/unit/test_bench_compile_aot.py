"""The AOT compile probe's pure parts: which dynamo guards an artefact keeps, the guard pickler patch, and the
report page and summary entry written from the device runs' raw results."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from compile_aot_probe import guard_filter, patch_guard_pickler, savable_guard  # noqa: E402
from reports.compile_aot import DOCS, RUNS, page, summary_entry  # noqa: E402


def guard(guard_type: str, name: str, is_global: bool = False) -> SimpleNamespace:
    return SimpleNamespace(guard_type=guard_type, name=name, is_global=is_global)


def test_tensor_and_argument_guards_are_kept_unsavable_ones_dropped():
    assert savable_guard(guard("TENSOR_MATCH", "L['x']"))
    assert savable_guard(guard("DICT_KEYS_MATCH", "L['transformer_options']"))
    assert savable_guard(guard("CONSTANT_MATCH", "L['self']._modules['out']._modules['0'].eps"))
    assert not savable_guard(guard("TYPE_MATCH", "L['self']"))  # ComfyUI's nested ops classes
    assert not savable_guard(guard("ID_MATCH", "L['x']"))
    assert not savable_guard(guard("CONSTANT_MATCH", "G['comfy'].flag", is_global=True))
    assert not savable_guard(guard("EQUALS_MATCH", "L['f'].__closure__[0].cell_contents"))
    assert not savable_guard(guard("DICT_CONTAINS", "dict(type(L['self']).__mro__[3].__dict__)"))
    assert guard_filter([guard("TENSOR_MATCH", "L['x']"), guard("TYPE_MATCH", "L['x']")]) == [True, False]


def dump_with_guard_pickler(value: object, missing: dict) -> object:
    import io

    import torch._dynamo.guards as guards

    buffer = io.BytesIO()
    guards.GuardsStatePickler({}, {}, missing, buffer).dump(value)
    return pickle.loads(buffer.getvalue())


def test_the_pickler_patch_keeps_a_dtype_that_a_module_attribute_shares():
    """torch 2.11 marks a module's plain attributes missing by id(); float16 then pickles as _Missing."""
    import torch._dynamo.guards as guards

    missing = {id(torch.float16): torch.float16}  # as a module's `dtype = torch.float16` leaves it
    original = guards.GuardsStatePickler.reducer_override
    assert type(dump_with_guard_pickler([torch.float16], missing)[0]).__name__ == "_Missing"  # the defect
    try:
        patch_guard_pickler(torch)
        assert dump_with_guard_pickler([torch.float16, 3], missing) == [torch.float16, 3]
    finally:
        guards.GuardsStatePickler.reducer_override = original


def test_the_report_reads_the_runs_and_states_the_compile_part_against_the_worker_path():
    runs = {name: json.loads((DOCS / "raw" / raw).read_text()) for name, raw in RUNS}
    text = page(runs)
    graphed = runs["c"]["roles"]["aotgraph"]
    assert graphed["dynamo_frames"] == {} and graphed["guard_fallbacks"] == 0 and graphed["cuda_graphs"] == 1
    compile_part = graphed["aot_load_s"] + graphed["aot_first_sample_s"] - graphed["aot_steady_sample_s"]
    assert f"The compile's part of the first job: {compile_part:.2f} s" in text
    assert "| aotgraph | 9.14 | 4.7 |" in text and "Not measured: the path is not in the worker yet" in text
    entry = summary_entry(runs["c"])
    assert entry["value"] == graphed["aot_first_done_after_start_s"] and "reported" in entry["goal"]
