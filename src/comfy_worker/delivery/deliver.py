"""Returns a job's outputs the way the user asked: inline base64, or S3 URLs (and `auto` picks by size)."""

from __future__ import annotations

import base64
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_worker.delivery.outputs import OutputData, OutputFile, OutputText, data_bytes, data_size
from comfy_worker.delivery.typed_outputs import file_entry, text_entry
from comfy_worker.errors import DeliveryFailed
from comfy_worker.settings import S3Config

JSON_HEADROOM_BYTES = 64_000  # the rest of the response: metrics, timings, names


@dataclass
class Delivery:
    outputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    typed: list[dict[str, Any]] = field(default_factory=list)  # the same outputs, one typed entry each
    mode: str = "base64"
    upload_ms: float = 0.0
    warnings: list[str] = field(default_factory=list)


def choose_mode(requested: str, inline_bytes: int, limit_bytes: int, has_bucket: bool) -> str:
    """base64 or s3, for the requested mode and the size the outputs would take inline."""
    if requested == "s3" and not has_bucket:
        raise DeliveryFailed(
            "output_mode is 's3' but no bucket is configured: set BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and "
            "BUCKET_SECRET_ACCESS_KEY on the endpoint, or send an 's3' object in the input"
        )
    if requested != "auto":
        return requested
    if inline_bytes + JSON_HEADROOM_BYTES <= limit_bytes:
        return "base64"
    if has_bucket:
        return "s3"
    raise DeliveryFailed(
        f"the outputs take {inline_bytes / 1e6:.1f} MB as base64, over the {limit_bytes / 1e6:g} MB a RunPod response "
        "can carry: configure a bucket (BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY) or send "
        "an 's3' object in the input, and the outputs will be returned as URLs"
    )


def base64_size(n_bytes: int) -> int:
    return 4 * ((n_bytes + 2) // 3)


def deliver(
    files: list[tuple[OutputFile, OutputData]],
    texts: list[OutputText],
    *,
    job_id: str,
    requested_mode: str,
    limit_bytes: int,
    bucket: S3Config | None,
    local_dir: Path | None = None,
) -> Delivery:
    inline = sum(base64_size(data_size(data)) for _, data in files) + sum(len(t.text) for t in texts)
    mode = choose_mode(requested_mode, inline, limit_bytes, bucket is not None)
    delivery = Delivery(mode=mode)
    if mode == "base64" and inline + JSON_HEADROOM_BYTES > limit_bytes:
        delivery.warnings.append(
            f"outputs take {inline / 1e6:.1f} MB inline, over {limit_bytes / 1e6:g} MB: RunPod may refuse the response"
        )
    # base64 content is carried twice (compatible key and typed entry) only while the response stays under the limit
    typed_with_data = mode == "s3" or 2 * inline + JSON_HEADROOM_BYTES <= limit_bytes
    if not typed_with_data and files:
        delivery.warnings.append("the typed 'outputs' entries carry no 'data': twice the base64 would pass the "
                                 "response limit; each entry's 'key' and 'index' point to its data")
    started = time.monotonic()
    for output, data in files:
        item: dict[str, Any] = {"filename": output.filename, "node_id": output.node_id,
                                "content_type": output.content_type}
        if output.animated:
            item["animated"] = True
        if mode == "s3":
            from comfy_worker import s3  # boto3 is slow to import and only needed here

            assert bucket is not None
            item.update(type="s3_url", data=s3.upload(bucket, s3.object_key(bucket, job_id, output.name), data,
                                                       output.content_type))
        else:
            item.update(type="base64", data=base64.b64encode(data_bytes(data)).decode("ascii"))
        same_kind = delivery.outputs.setdefault(output.kind, [])
        same_kind.append(item)
        delivery.typed.append(file_entry(output, data, item, len(same_kind) - 1, typed_with_data))
        if local_dir is not None:
            _save_locally(local_dir / job_id, output, data)
    for text in texts:
        same_kind = delivery.outputs.setdefault("text", [])
        same_kind.append({"node_id": text.node_id, "type": "text", "data": text.text})
        delivery.typed.append(text_entry(text, len(same_kind) - 1))
    delivery.upload_ms = round((time.monotonic() - started) * 1000, 1)
    return delivery


def _save_locally(folder: Path, output: OutputFile, data: OutputData) -> None:
    path = folder / output.name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, Path):
        shutil.copyfile(data, path)
    else:
        path.write_bytes(data)
