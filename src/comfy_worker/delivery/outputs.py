"""Finds every output of a finished prompt in its history entry and reads the files from the instance's folders.

ComfyUI's output keys: `images` (SaveImage; also SaveAnimatedWEBP/PNG and SaveVideo, with `animated: [true]`),
`gifs` (VideoHelperSuite's VHS_VideoCombine: gif, mp4, webm), `audio`, `video`/`videos`, `3d`, and `text`
(PreviewAny: strings, not files). Video files saved under `images` are returned under `videos`.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_worker.comfy.workflow_rewrite import user_subfolder
from comfy_worker.fleet.instance import InstanceDirs

FILE_KEYS = {"images": "images", "gifs": "gifs", "audio": "audio", "video": "videos", "videos": "videos", "3d": "3d"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"}
FOLDER_OF_TYPE = {"output": "output", "temp": "temp", "input": "input"}
IN_MEMORY_MAX_BYTES = 16 * 1024 * 1024  # a larger output stays on disk until it is delivered (streamed to S3)

OutputData = bytes | Path  # an output's content, or the saved file when it is too large to hold in memory

mimetypes.add_type("image/webp", ".webp")
mimetypes.add_type("audio/flac", ".flac")
mimetypes.add_type("model/gltf-binary", ".glb")


@dataclass(frozen=True)
class OutputFile:
    kind: str  # the result key: images, gifs, videos, audio, 3d
    node_id: str
    filename: str
    subfolder: str
    folder_type: str  # output or temp
    animated: bool = False
    job_folder: str = ""  # the job's own output folder (workflow_rewrite), hidden from the user

    @property
    def name(self) -> str:
        """The file's name as the user's workflow would have saved it: their subfolder, then the file name."""
        subfolder = user_subfolder(self.subfolder, self.job_folder) if self.job_folder else self.subfolder
        return f"{subfolder}/{self.filename}" if subfolder else self.filename

    @property
    def content_type(self) -> str:
        return mimetypes.guess_type(self.filename)[0] or "application/octet-stream"

    def path_in(self, dirs: InstanceDirs) -> Path:
        """The file's path inside the instance's folder of its type; never outside it."""
        base = getattr(dirs, FOLDER_OF_TYPE[self.folder_type]).resolve()
        path = (base / self.subfolder / self.filename).resolve()
        if not path.is_relative_to(base):
            raise ValueError(f"output {self.filename!r} points outside the instance's {self.folder_type} folder")
        return path


def read_output(output: OutputFile, dirs: InstanceDirs) -> OutputData:
    """The output's bytes, or its path when it is large. Only files in the job's own output folder stay on disk:
    that folder is the job's until delivery, while temp files can be cleared by an instance restart."""
    path = output.path_in(dirs)
    if output.folder_type == "output" and path.stat().st_size > IN_MEMORY_MAX_BYTES:
        return path
    return path.read_bytes()


def data_size(data: OutputData) -> int:
    return data.stat().st_size if isinstance(data, Path) else len(data)


def data_bytes(data: OutputData) -> bytes:
    return data.read_bytes() if isinstance(data, Path) else data


@dataclass(frozen=True)
class OutputText:
    node_id: str
    text: str


def find_outputs(
    history_outputs: dict[str, Any], include_previews: bool, job_folder: str = ""
) -> tuple[list[OutputFile], list[OutputText]]:
    files: list[OutputFile] = []
    texts: list[OutputText] = []
    for node_id, node_output in history_outputs.items():
        if not isinstance(node_output, dict):
            continue
        animated_flags = node_output.get("animated") or []
        for key, items in node_output.items():
            if key == "text":
                texts.extend(OutputText(str(node_id), str(t)) for t in _as_list(items))
                continue
            kind = FILE_KEYS.get(key)
            if kind is None:
                continue
            for position, item in enumerate(_as_list(items)):
                ref = _file_ref(item)
                if ref is None:
                    continue
                filename, subfolder, folder_type = ref
                if folder_type == "temp" and not include_previews:
                    continue
                if folder_type not in FOLDER_OF_TYPE:
                    continue
                animated = bool(animated_flags[position]) if position < len(animated_flags) else bool(animated_flags)
                kind_here = "videos" if kind == "images" and Path(filename).suffix.lower() in VIDEO_SUFFIXES else kind
                files.append(OutputFile(kind_here, str(node_id), filename, subfolder, folder_type,
                                        animated and kind_here == "images", job_folder))
    return files, texts


def _file_ref(item: Any) -> tuple[str, str, str] | None:
    if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
        return None
    return item["filename"], str(item.get("subfolder") or ""), str(item.get("type") or "output")


def _as_list(items: Any) -> list[Any]:
    if isinstance(items, list | tuple):
        return list(items)
    return [items]
