"""What happens after a job failed on its instance: whether it runs once more (its instance died before any output;
CUDA ran out of memory and the instance's memory was freed), whether the instance is restarted (it stopped
answering), and the words the user reads for each."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from comfy_worker.comfy.follower import PromptFollower
from comfy_worker.errors import ExecutionFailed, InstanceDied, WorkerError
from comfy_worker.fleet.gpus import Gpu
from comfy_worker.fleet.instance import ComfyInstance
from comfy_worker.settings import Settings

log = logging.getLogger("comfy_worker.recovery")

PROBE_INTERVAL_S = 0.5


def retry_reason(error: WorkerError, settings: Settings, label: str, pinned: bool, retried: bool,
                 pinned_siblings: Sequence[str] = ()) -> str | None:
    """The warning a job carries when it runs once more after `error`, or None when it fails with `error`.
    `pinned_siblings`: the healthy instances other than `label` that a pinned job's `gpu` pin names (the other
    instances of its GPU under INSTANCES_PER_GPU); a pinned job whose instance died runs again only there."""
    if retried:
        return None
    if isinstance(error, InstanceDied) and settings.retry_lost_jobs and not error.outputs_seen:
        if not pinned:
            return (f"ComfyUI on {label} died during the job before it produced any output; the job ran once more, "
                    "on another instance where one was healthy")
        if pinned_siblings:
            return (f"ComfyUI on {label} died during the job before it produced any output; the job ran once more, "
                    f"on another instance of the GPU it pins ({', '.join(pinned_siblings)})")
    if isinstance(error, ExecutionFailed) and error.out_of_memory and settings.retry_out_of_memory:
        return f"out of memory on {label}: its memory was freed (models unloaded) and the job ran once more"
    return None


def out_of_memory_error(error: ExecutionFailed, label: str, gpu: Gpu | None, retried: bool) -> ExecutionFailed:
    """The final out-of-memory error, naming the card and its memory."""
    card = f"{gpu.name}, {gpu.memory_total_mib / 1024:.0f} GiB of VRAM" if gpu else "a CPU instance"
    again = " even after its memory was freed and the job ran once more" if retried else ""
    return ExecutionFailed(
        f"{error} — {label} ({card}) ran out of memory{again}. Lower the resolution, batch size or frame count, "
        "use a smaller or quantised model, or run on a GPU with more VRAM",
        out_of_memory=True,
    )


def paid_work_note(nodes: tuple[str, ...]) -> str:
    return (f"It was not run again: API node(s) {', '.join(nodes)} had started, and running them again would pay "
            "for their calls twice")


def restart_if_hung(instance: ComfyInstance, seconds: float, launches: int, out_of_service: bool = False) -> bool:
    """Gives an instance that stopped answering `seconds` to answer again; kills it otherwise, so the fleet restarts
    it. Returns whether it was killed. An instance restarted since `launches` (the process the job ran on) is the
    fleet's to watch, never killed here: a new process is slow to answer while it starts. `out_of_service`: taken
    out of the scheduler's choice while it is judged (when the job answered before the verdict). Blocking: run it
    off the event loop."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if instance.launches != launches or not instance.is_alive() or instance.client.is_ready():
                return False  # answering again, or dead already or restarting, and the fleet's watcher has it
            if out_of_service:  # not answering: no job goes to it until it does
                instance.healthy = False
            time.sleep(PROBE_INTERVAL_S)
        if instance.launches != launches:
            return False
        log.error("[%s] ComfyUI has not answered for %g s; killing it so that it restarts. Last log lines:\n%s",
                  instance.label, seconds, instance.log_tail(10))
        instance.kill_hung()
        return True
    finally:
        if (out_of_service and not instance.healthy and instance.launches == launches and instance.is_alive()
                and not instance.stopping):
            instance.healthy = instance.client.is_ready()


def class_types(workflow: dict[str, Any]) -> set[str]:
    return {str(node.get("class_type")) for node in workflow.values()}


def api_node_ids(workflow: dict[str, Any], api_classes: set[str]) -> set[str]:
    return {node_id for node_id, node in workflow.items() if node.get("class_type") in api_classes}


def paid_nodes_started(workflow: dict[str, Any], api_nodes: set[str], follower: PromptFollower | None
                       ) -> tuple[str, ...]:
    """The API nodes that began before the job failed; all of them when the websocket missed messages (the safe
    side: a paid call is never repeated on a guess)."""
    if follower is None:
        return ()
    started = api_nodes if not follower.saw_every_message else api_nodes & follower.started_nodes
    return tuple(f"{n} ({workflow[n].get('class_type')})" for n in sorted(started))
