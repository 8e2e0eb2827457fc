"""The rules for a file name a job gives (an input image, a model): a plain name inside its folder, that ComfyUI
stores and finds under exactly that name. Each refusal says what to change."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from comfy_worker.errors import InvalidInput

MAX_NAME_BYTES = 255  # a file name's limit on Linux file systems
# folders ComfyUI itself keeps in its input folder (Load3D makes input/3d): a file cannot take their name
RESERVED_INPUT_NAMES = ("3d",)
# the extensions ComfyUI lists in model folders (folder_paths.supported_pt_extensions), and GGUF's custom loaders'
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".sft", ".gguf")


def check_file_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"{where}: 'name' must be a non-empty file name")
    if "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        raise InvalidInput(
            f"{where}: 'name' {name!r} must be a plain file name (no folders, no '..')"
        )
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise InvalidInput(f"{where}: 'name' is {size} bytes in UTF-8, over the {MAX_NAME_BYTES} a file name may "
                           "have: shorten it")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name) or '"' in name:
        raise InvalidInput(f"{where}: 'name' {name!r} holds a control character (a line break, a tab) or a double "
                           "quote, which an upload cannot carry unchanged: rename the file without them")
    return name


def check_input_name(name: Any, where: str) -> str:
    """An input file's name: a plain file name that is not one of ComfyUI's own input folders."""
    check_file_name(name, where)
    if name.lower() in RESERVED_INPUT_NAMES:
        raise InvalidInput(f"{where}: 'name' {name!r} is a folder ComfyUI keeps in its input folder: give the file "
                           f"a name with an extension, e.g. '{name}.png'")
    return name


def check_model_name(name: Any, where: str, folder: str) -> str:
    """A model file's name: ComfyUI lists a file in a model folder only if its name ends in a model extension."""
    check_file_name(name, where)
    if PurePosixPath(name.lower()).suffix not in MODEL_EXTENSIONS:
        raise InvalidInput(f"{where}: the model file name {name!r} does not end in {', '.join(MODEL_EXTENSIONS)}, so "
                           f"ComfyUI would not list it in '{folder}' (its loader would answer 'not in list'): give "
                           f"a 'name' such as '{PurePosixPath(name).stem or 'model'}.safetensors'")
    return name
