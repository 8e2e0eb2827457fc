"""Still images re-encoded in the worker on request: PNG as ComfyUI saved them (the default), WEBP or JPEG with a
quality. Animated images, videos and other files are returned as they are."""

from __future__ import annotations

import dataclasses
import io
from pathlib import PurePosixPath

from comfy_worker.delivery.outputs import OutputData, OutputFile, data_bytes
from comfy_worker.errors import InvalidInput

IMAGE_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
FORMAT_ALIASES = {"jpg": "jpeg"}
CONVERTIBLE_SUFFIXES = {".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DEFAULT_QUALITY = 90


def parse_image_format(value: object, quality: object) -> tuple[str, int]:
    """The job's `image_format` and `image_quality`, checked: (format, quality)."""
    if value is None:
        name = "png"
    elif isinstance(value, str) and FORMAT_ALIASES.get(value.lower(), value.lower()) in IMAGE_FORMATS:
        name = FORMAT_ALIASES.get(value.lower(), value.lower())
    else:
        raise InvalidInput(f"'image_format' must be one of png, webp, jpeg, not {value!r}")
    if quality is None:
        return name, DEFAULT_QUALITY
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InvalidInput(f"'image_quality' must be a whole number from 1 to 100, not {quality!r}")
    return name, quality


def convert_images(
    files: list[tuple[OutputFile, OutputData]], image_format: str, quality: int
) -> tuple[list[tuple[OutputFile, OutputData]], list[str]]:
    """Re-encodes every still image to `image_format`; returns the files and a warning for any it could not read."""
    if image_format == "png":
        return files, []
    from PIL import Image

    suffix = ".jpg" if image_format == "jpeg" else f".{image_format}"
    converted, warnings = [], []
    for output, data in files:
        if output.kind != "images" or output.animated or PurePosixPath(output.filename).suffix.lower() \
                not in CONVERTIBLE_SUFFIXES:
            converted.append((output, data))
            continue
        try:
            with Image.open(io.BytesIO(data_bytes(data))) as image:
                if image_format == "jpeg" and image.mode not in ("RGB", "L"):
                    image = image.convert("RGB")  # JPEG has no alpha channel
                buffer = io.BytesIO()
                image.save(buffer, format=IMAGE_FORMATS[image_format], quality=quality)
        except (OSError, ValueError) as error:
            warnings.append(f"output {output.name} was returned unconverted: it is not a readable image ({error})")
            converted.append((output, data))
            continue
        renamed = dataclasses.replace(output, filename=str(PurePosixPath(output.filename).with_suffix(suffix)))
        converted.append((renamed, buffer.getvalue()))
    return converted, warnings
