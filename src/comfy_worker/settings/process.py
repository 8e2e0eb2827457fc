"""The worker process: log levels, start.sh's volume requirements, RunPod's progress webhook."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_worker.settings.reader import EnvReader, Variable

PROCESS = (
    Variable("RUNPOD_LOG_LEVEL", "INFO",
             "The RunPod SDK's log level. Its own default, DEBUG, logs every job's whole result, base64 images and "
             "all.", "process"),
    Variable("LOG_LEVEL", "INFO", "The worker's log level.", "process"),
    Variable("VOLUME_NODE_REQUIREMENTS", "1",
             "Read by start.sh: install the requirements.txt of custom nodes on the network volume "
             "(/runpod-volume/custom_nodes) into the image's one environment before the worker starts.", "process"),
    Variable("RUNPOD_WEBHOOK_POST_OUTPUT", "",
             "Set by RunPod; when absent (local runs) no progress updates are sent.", "process"),
)


@dataclass(frozen=True)
class ProcessSettings:
    log_level: str
    send_progress: bool

    @classmethod
    def read(cls, env: EnvReader) -> ProcessSettings:
        return cls(
            log_level=(env.raw("LOG_LEVEL") or "INFO").upper(),
            send_progress=bool(env.raw("RUNPOD_WEBHOOK_POST_OUTPUT")),
        )
