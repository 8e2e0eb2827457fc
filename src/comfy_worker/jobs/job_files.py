"""Every file a job causes in its instance's input, output and temp folders is removed when the job ends, whatever
its name: uploads ComfyUI stored under another name, outputs of a `filename_prefix` the worker could not put in the
job's folder (one given by a link), PreviewImage files in temp. An instance runs one job at a time, so what was not
there when the job began is the job's. The folders are the instance's own (COMFY_WORK_DIR/<label>), so their
listing is short."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from comfy_worker.fleet.instance import InstanceDirs


def job_folders(dirs: InstanceDirs) -> tuple[Path, ...]:
    return dirs.input, dirs.output, dirs.temp


def snapshot(dirs: InstanceDirs) -> frozenset[str]:
    """Every path under the instance's input, output and temp folders."""
    return frozenset(path for folder in job_folders(dirs) for path in _walk(folder))


def remove_new(dirs: InstanceDirs, before: frozenset[str]) -> None:
    """Removes what appeared since `before`, deepest first; links are removed, never followed."""
    for folder in job_folders(dirs):
        for path in sorted(set(_walk(folder)) - before, key=lambda p: p.count(os.sep), reverse=True):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def _walk(folder: Path) -> list[str]:
    found = []
    for parent, subfolders, files in os.walk(folder, followlinks=False):
        found += [os.path.join(parent, name) for name in subfolders + files]
    return found
