"""Property-based fuzzing of bad input (hypothesis): malformed jobs go to the real worker on real CPU instances, and
every one must come back as a string error that says what to fix, with the worker serving the next good job.

Two layers: `parse_job_input` alone with many cases (fast), and `Worker.handle` end to end (ComfyUI's own checks
included: unknown classes, links to missing nodes, cycles, files that are not images). The counts tried are printed
and checked; docs/reliability.md quotes them."""

from __future__ import annotations

import base64
import string
from typing import Any

import pytest
from conftest import make_job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from workflows import invert, load_invert

from comfy_worker.errors import InvalidInput
from comfy_worker.jobs.input_files import decode_input_file
from comfy_worker.jobs.job_input import KNOWN_FIELDS, parse_job_input
from comfy_worker.url_guard import UrlGuard

PARSE_CASES = 600
WORKER_CASES = 120

anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
not_a_dict = anything.filter(lambda value: not isinstance(value, dict))
node_id = st.text(string.digits, min_size=1, max_size=3)
junk_base64 = st.text(alphabet=string.printable, min_size=1, max_size=64).filter(
    lambda text: not _decodes(text) and "://" not in text[:16])
escaping_name = st.sampled_from(["../evil.png", "../../etc/passwd", "/etc/passwd", "a/b.png", "..", ".",
                                 "C:\\\\x.png", "x\0.png", "", "   ", "n" * 300])
other_scheme = st.sampled_from(["file:///etc/passwd", "ftp://127.0.0.1/a.png", "gopher://127.0.0.1/",
                                "s3://bucket/key.png", "javascript:alert(1)", "data:text/html,<b>x</b>"])


def _decodes(text: str) -> bool:
    try:
        return bool(base64.b64decode("".join(text.split()), validate=True))
    except ValueError:
        return False


@st.composite
def ui_format(draw) -> dict[str, Any]:
    return {"nodes": draw(st.lists(anything, max_size=3)), "links": draw(st.lists(anything, max_size=3)),
            "version": 0.4}


@st.composite
def unknown_classes(draw) -> dict[str, Any]:
    name = draw(st.text(string.ascii_letters, min_size=3, max_size=20).map(lambda s: "NoSuchNode" + s))
    return {"1": {"class_type": name, "inputs": {}}}


@st.composite
def missing_links(draw) -> dict[str, Any]:
    workflow = invert()
    workflow["2"]["inputs"]["image"] = [draw(st.sampled_from(["9", "42", "x"])), draw(st.integers(0, 3))]
    return workflow


@st.composite
def cycles(draw) -> dict[str, Any]:
    length = draw(st.integers(1, 4))
    workflow = {str(i): {"class_type": "ImageInvert", "inputs": {"image": [str((i + 1) % length), 0]}}
                for i in range(length)}
    workflow["99"] = {"class_type": "SaveImage", "inputs": {"images": ["0", 0], "filename_prefix": "cycle"}}
    return workflow


@st.composite
def wrong_node_shapes(draw) -> dict[str, Any]:
    node = draw(st.one_of(
        not_a_dict,
        st.fixed_dictionaries({"inputs": st.just({})}),
        st.fixed_dictionaries({"class_type": st.one_of(st.integers(), st.just(""), st.none())}),
        st.fixed_dictionaries({"class_type": st.just("ImageInvert"), "inputs": not_a_dict}),
    ))
    return {draw(node_id): node}


def with_images(images: Any) -> dict[str, Any]:
    return {"workflow": load_invert("in.png"), "images": images}


bad_images = st.one_of(
    not_a_dict.filter(lambda v: v is not None and not isinstance(v, list)).map(with_images),
    st.lists(not_a_dict, min_size=1, max_size=2).map(with_images),
    junk_base64.map(lambda data: with_images([{"name": "in.png", "image": data}])),
    escaping_name.map(lambda name: with_images([{"name": name, "image": base64.b64encode(b"x").decode()}])),
    other_scheme.map(lambda url: with_images([{"name": "in.png", "image": url}])),
)
bad_fields = st.one_of(
    st.fixed_dictionaries({"gpu": st.one_of(st.integers(max_value=-1), st.text(min_size=1), st.floats())}),
    st.fixed_dictionaries({"timeout_s": st.one_of(st.integers(max_value=0), st.text(min_size=1))}),
    st.fixed_dictionaries({"output_mode": st.text(min_size=1).filter(lambda m: m not in ("auto", "base64", "s3"))}),
    st.fixed_dictionaries({"image_format": st.text(min_size=1).filter(
        lambda f: f.lower() not in ("png", "webp", "jpeg", "jpg"))}),
    st.fixed_dictionaries({"image_quality": st.one_of(st.integers(max_value=0), st.integers(min_value=101))}),
    st.fixed_dictionaries({"s3": not_a_dict.filter(lambda v: v is not None)}),
    st.fixed_dictionaries({"include_previews": st.one_of(st.integers(), st.text())}),
    st.fixed_dictionaries({"refresh_worker": st.one_of(st.integers(), st.text())}),
).map(lambda fields: {"workflow": invert(), **fields})

bad_for_parsing = st.one_of(
    not_a_dict,
    st.dictionaries(st.sampled_from(["images", "gpu", "prompt", "workflows"]), anything, max_size=3),
    not_a_dict.map(lambda w: {"workflow": w}),
    ui_format().map(lambda w: {"workflow": w}),
    st.just({"workflow": {}}),
    wrong_node_shapes().map(lambda w: {"workflow": w}),
    bad_images,
    bad_fields,
)
bad_for_comfyui = st.one_of(
    unknown_classes().map(lambda w: {"workflow": w}),
    missing_links().map(lambda w: {"workflow": w}),
    cycles().map(lambda w: {"workflow": w}),
    st.binary(min_size=1, max_size=256).filter(lambda b: not b.startswith(b"\x89PNG")).map(
        lambda data: with_images([{"name": "in.png", "image": base64.b64encode(data).decode()}])),
)


def test_malformed_inputs_are_refused_with_a_message_naming_the_problem():
    """Each malformed input is refused by the parser with a message naming the field to fix (or the input itself),
    or, where it parses, when its files are decoded. The cases tried are counted in this test, so it holds alone."""
    names = (*KNOWN_FIELDS, "input")
    tried = 0

    @settings(max_examples=PARSE_CASES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
    @given(bad_for_parsing)
    def one(raw):
        nonlocal tried
        tried += 1
        try:
            request = parse_job_input(raw)
        except InvalidInput as error:
            message = str(error)
            assert len(message) > 15 and any(name in message for name in names), message
            return
        # what parses must be refused later, when its files are decoded
        with pytest.raises(InvalidInput):
            for item in request.files:
                decode_input_file(item, max_bytes=1_000_000, url_timeout_s=1, url_guard=UrlGuard())

    one()
    print(f"\nfuzzed parse_job_input with {tried} malformed inputs")
    assert tried >= PARSE_CASES * 0.9


@pytest.mark.comfyui
def test_malformed_jobs_get_string_errors_and_the_worker_keeps_serving(worker, run):
    tried = 0

    @settings(max_examples=WORKER_CASES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow,
                                     HealthCheck.function_scoped_fixture])
    @given(st.one_of(bad_for_parsing, bad_for_comfyui))
    def one(raw):
        nonlocal tried
        tried += 1
        result = run(worker.handle({"id": "fuzz", "input": raw}))
        assert set(result) <= {"error", "details", "refresh_worker", "status"} and result["status"] == "failed", result
        assert isinstance(result["error"], str) and len(result["error"]) > 15, result

    one()
    print(f"\nfuzzed the worker with {tried} malformed jobs")
    assert tried >= WORKER_CASES * 0.9
    for gpu in (0, 1):
        assert "error" not in run(worker.handle(make_job(invert(), gpu=gpu)))


@pytest.mark.comfyui
def test_an_oversized_input_file_is_refused_before_it_is_decoded(worker, run):
    limit = worker.settings.max_input_file_bytes
    huge = base64.b64encode(b"\0" * (limit + 1024)).decode()
    result = run(worker.handle(make_job(load_invert("in.png"), images=[{"name": "in.png", "image": huge}])))
    assert "over the" in result["error"] and "MAX_INPUT_FILE_MB" in result["error"]
