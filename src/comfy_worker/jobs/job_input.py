"""Turns a job's raw `input` into a checked JobRequest, or an InvalidInput error that says what to fix.

The contract is a superset of worker-comfyui's: `workflow`, `images`, `comfy_org_api_key` keep their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_worker.comfy.previews import PREVIEW_METHODS
from comfy_worker.delivery.image_format import parse_image_format
from comfy_worker.errors import InvalidInput
from comfy_worker.file_names import check_input_name
from comfy_worker.models.urls import ModelRef, parse_models, rewrite_workflow_urls
from comfy_worker.settings import OUTPUT_MODES, S3Config, SettingsError, split_bucket_endpoint
from comfy_worker.url_guard import UrlGuard

NO_PRIVATE_URLS = UrlGuard()
KNOWN_FIELDS = {
    "workflow", "images", "gpu", "timeout_s", "output_mode", "s3", "include_previews", "comfy_org_api_key",
    "image_format", "image_quality", "refresh_worker", "models", "previews",
}


@dataclass(frozen=True)
class InputFile:
    name: str
    source: str  # base64, a data URI or an http(s) URL; decoded by input_files


@dataclass(frozen=True)
class JobRequest:
    workflow: dict[str, Any]
    files: tuple[InputFile, ...] = ()
    gpu: int | None = None
    timeout_s: float | None = None
    output_mode: str | None = None
    s3: S3Config | None = None
    include_previews: bool = False
    comfy_org_api_key: str | None = None
    image_format: str = "png"
    image_quality: int = 90
    refresh_worker: bool = False
    models: tuple[ModelRef, ...] = ()
    previews: str | None = None  # ComfyUI's preview method, streamed in STREAM_RESULTS mode
    ignored_fields: tuple[str, ...] = ()


def parse_job_input(raw: Any, url_guard: UrlGuard = NO_PRIVATE_URLS) -> JobRequest:
    """`url_guard` goes with a job's own S3 endpoint: the private addresses it may reach (ALLOW_PRIVATE_URLS)."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"the job input must be a JSON object with a 'workflow', not {_kind(raw)}")
    if "workflow" not in raw:
        raise InvalidInput("the job input has no 'workflow': send the workflow in ComfyUI's API format")
    image_format, image_quality = parse_image_format(raw.get("image_format"), raw.get("image_quality"))
    workflow, url_models = rewrite_workflow_urls(parse_workflow(raw["workflow"]))
    return JobRequest(
        workflow=workflow,
        models=parse_models(raw.get("models")) + url_models,
        files=_parse_files(raw.get("images")),
        gpu=_optional_int(raw, "gpu", minimum=0),
        timeout_s=_optional_positive(raw, "timeout_s"),
        output_mode=_parse_output_mode(raw.get("output_mode")),
        s3=_parse_s3(raw.get("s3"), url_guard),
        include_previews=_optional_bool(raw, "include_previews"),
        comfy_org_api_key=_optional_str(raw, "comfy_org_api_key"),
        refresh_worker=_optional_bool(raw, "refresh_worker"),
        image_format=image_format,
        image_quality=image_quality,
        previews=_parse_previews(raw.get("previews")),
        ignored_fields=tuple(sorted(set(raw) - KNOWN_FIELDS)),
    )


def wants_refresh(raw: Any) -> bool:
    """`refresh_worker: true` in a job's input, read even when the rest of the input is invalid."""
    return isinstance(raw, dict) and raw.get("refresh_worker") is True


def parse_workflow(workflow: Any) -> dict[str, Any]:
    if not isinstance(workflow, dict):
        raise InvalidInput(f"'workflow' must be a JSON object (ComfyUI's API format), not {_kind(workflow)}")
    if "nodes" in workflow and "links" in workflow:
        raise InvalidInput(
            "'workflow' is in ComfyUI's UI format (it has 'nodes' and 'links'); this worker needs the API format: "
            "in ComfyUI choose Workflow → Export (API) and send that file's content"
        )
    if not workflow:
        raise InvalidInput("'workflow' is empty: it needs at least one node")
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            raise InvalidInput(f"workflow node {node_id!r} must be an object with 'class_type' and 'inputs'")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise InvalidInput(
                f"workflow node {node_id!r} has no 'class_type': is the workflow in ComfyUI's API format?"
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise InvalidInput(f"workflow node {node_id!r} ({node['class_type']}): 'inputs' must be an object")
    return workflow


def _parse_files(images: Any) -> tuple[InputFile, ...]:
    if images is None:
        return ()
    if not isinstance(images, list):
        raise InvalidInput(f"'images' must be a list of {{name, image}} objects, not {_kind(images)}")
    files, seen = [], set()
    for i, item in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object with 'name' and 'image', not {_kind(item)}")
        name = check_input_name(item.get("name"), where)
        if name in seen:
            raise InvalidInput(f"{where}: the name {name!r} is used twice")
        seen.add(name)
        source = item.get("image")
        if not isinstance(source, str) or not source:
            raise InvalidInput(f"{where} ({name!r}): 'image' must be base64, a data URI or an http(s) URL")
        files.append(InputFile(name=name, source=source))
    return tuple(files)


def _parse_previews(value: Any) -> str | None:
    """`previews`: true (latent2rgb, drawn from the latent without a model), or one of ComfyUI's preview methods."""
    if value is None or value is False:
        return None
    if value is True:
        return "latent2rgb"
    if isinstance(value, str) and value.lower() in PREVIEW_METHODS:
        return value.lower()
    raise InvalidInput(f"'previews' must be true, false or one of {', '.join(PREVIEW_METHODS)}, not {value!r}")


def _parse_output_mode(mode: Any) -> str | None:
    if mode is None:
        return None
    if not isinstance(mode, str) or mode.lower() not in OUTPUT_MODES:
        raise InvalidInput(f"'output_mode' must be one of {', '.join(OUTPUT_MODES)}, not {mode!r}")
    return mode.lower()


S3_FIELDS = ("endpoint_url", "access_key_id", "secret_access_key")


def _parse_s3(s3: Any, url_guard: UrlGuard) -> S3Config | None:
    if s3 is None:
        return None
    if not isinstance(s3, dict):
        raise InvalidInput("'s3' must be an object with endpoint_url, access_key_id, secret_access_key, bucket")
    missing = [f for f in S3_FIELDS if not isinstance(s3.get(f), str) or not s3[f]]
    if missing:
        raise InvalidInput(f"'s3' lacks {', '.join(missing)}")
    expiry = s3.get("url_expiry_s", 604800)
    if isinstance(expiry, bool) or not isinstance(expiry, int) or expiry < 1:
        raise InvalidInput("'s3.url_expiry_s' must be a positive whole number of seconds")
    try:
        endpoint, bucket = split_bucket_endpoint(s3["endpoint_url"], str(s3.get("bucket") or ""))
    except SettingsError:
        raise InvalidInput("'s3' needs a 'bucket' (the endpoint does not start with a bucket name)") from None
    return S3Config(
        endpoint_url=endpoint,
        access_key_id=s3["access_key_id"],
        secret_access_key=s3["secret_access_key"],
        bucket=bucket,
        prefix=str(s3.get("prefix") or "").strip("/"),
        region=s3.get("region") or None,
        url_expiry_s=expiry,
        guard=url_guard,
    )


def _optional_int(raw: dict, field: str, minimum: int) -> int | None:
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"'{field}' must be a whole number ≥ {minimum}, not {value!r}")
    return value


def _optional_positive(raw: dict, field: str) -> float | None:
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInput(f"'{field}' must be a positive number of seconds, not {value!r}")
    return float(value)


def _optional_bool(raw: dict, field: str) -> bool:
    value = raw.get(field, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"'{field}' must be true or false, not {value!r}")
    return value


def _optional_str(raw: dict, field: str) -> str | None:
    value = raw.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'{field}' must be a string")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )
