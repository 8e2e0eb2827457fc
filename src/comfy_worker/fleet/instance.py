"""One ComfyUI process: its command line, its own folders, its log, its start and its stop."""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from comfy_worker.comfy.client import ComfyClient
from comfy_worker.errors import InstanceUnavailable
from comfy_worker.fleet.compiling import CompileStatus
from comfy_worker.fleet.tuning import LaunchTuning
from comfy_worker.settings import Settings

log = logging.getLogger("comfy_worker.instance")
comfy_log = logging.getLogger("comfy_worker.comfyui")

RECENT_LINES = 400  # kept with their numbers: the tail for errors, and the lines logged while a job ran
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class InstanceSpec:
    index: int
    gpu: int | None  # None: a CPU instance
    port: int
    slot: int = 0  # which of the instances sharing its GPU (INSTANCES_PER_GPU)

    @property
    def label(self) -> str:
        """gpu0, then gpu0.1 for a second instance on GPU 0; cpu0, cpu1 … for CPU instances."""
        if self.gpu is None:
            return f"cpu{self.index}"
        return f"gpu{self.gpu}" + (f".{self.slot}" if self.slot else "")


@dataclass(frozen=True)
class InstanceDirs:
    root: Path

    @property
    def user(self) -> Path:
        return self.root / "user"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def temp(self) -> Path:
        return self.root / "temp"

    @property
    def database(self) -> Path:
        return self.root / "comfyui.db"

    def create(self) -> None:
        for folder in (self.user, self.input, self.output, self.temp):
            folder.mkdir(parents=True, exist_ok=True)


def build_command(
    spec: InstanceSpec, settings: Settings, dirs: InstanceDirs, model_paths: list[Path],
    tuning_flags: tuple[str, ...] = (),
) -> list[str]:
    command = [
        settings.comfy_python, "main.py",
        "--listen", settings.host,
        "--port", str(spec.port),
        "--disable-auto-launch",
        "--user-directory", str(dirs.user),
        "--input-directory", str(dirs.input),
        "--output-directory", str(dirs.output),
        "--temp-directory", str(dirs.temp.parent),  # ComfyUI appends "temp": previews land in dirs.temp
        "--database-url", f"sqlite:///{dirs.database}",
    ]
    command += ["--cpu"] if spec.gpu is None else ["--cuda-device", str(spec.gpu)]
    for path in model_paths:
        command += ["--extra-model-paths-config", str(path)]
    user_sets_cache = any(arg.startswith("--cache-") for arg in settings.extra_args)  # ComfyUI allows one
    cache_flags = [] if user_sets_cache else list(settings.cache_flags)
    return command + cache_flags + list(tuning_flags) + list(settings.extra_args)


def _child_setup(cpus: tuple[int, ...]):
    def setup() -> None:
        """Runs in the child before exec: the kernel kills ComfyUI if the worker dies, so no instance outlives it.
        Linux ties this to the thread that started the child: launch only from long-lived threads."""
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


class ComfyInstance:
    def __init__(
        self, spec: InstanceSpec, settings: Settings, model_paths: list[Path], tuning: LaunchTuning | None = None
    ) -> None:
        self.spec = spec
        self.tuning = tuning or LaunchTuning()
        self.switches: dict = {}  # what the tuning node applied inside the process (GET /worker/tuning)
        self.compile = CompileStatus()
        self.label = spec.label
        self.settings = settings
        self.dirs = InstanceDirs(settings.work_dir / spec.label)
        self.model_paths = model_paths
        self.client = ComfyClient(f"http://{settings.host}:{spec.port}", spec.label,
                                  poll_timeout_s=settings.hung_instance_s)
        self.healthy = False
        self.restarts = 0
        self.launches = 0  # tells a job whether the process it started on is still the one running
        self.last_exit_code: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._recent: collections.deque[tuple[int, str]] = collections.deque(maxlen=RECENT_LINES)
        self.lines_logged = 0
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exit_code(self) -> int | None:
        return self._process.poll() if self._process else None

    def died_since(self, launches: int) -> bool:
        """Whether the process that was running at `launches` has exited since; False when it still runs."""
        if self.launches != launches:
            return True
        return not self.is_alive()

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(line for _, line in list(self._recent)[-lines:])

    def lines_since(self, mark: int) -> list[str]:
        """Log lines logged after `lines_logged` was `mark` (as many as are still kept)."""
        return [line for number, line in list(self._recent) if number > mark]

    def launch(self) -> None:
        if self._process is not None:
            self.last_exit_code = self._process.poll()
        self.launches += 1
        self.dirs.create()
        command = build_command(self.spec, self.settings, self.dirs, self.model_paths, self.tuning.flags)
        log.info("[%s] starting ComfyUI on port %d (%s): %s", self.label, self.spec.port, self.tuning.describe(),
                 " ".join(command[1:]))
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.tuning.env)
        cpus = self.tuning.cpu_set.cpus if self.tuning.cpu_set else ()
        try:
            self._process = subprocess.Popen(
                command, cwd=self.settings.comfyui_dir, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_child_setup(cpus),
            )
        finally:
            # Only now: until the new process exists, the watcher must not take the old one's exit for a crash
            # and launch a second process beside this one (a relaunch stops the old one first). A launch that
            # failed is left to the watcher.
            self._stopping = False
        threading.Thread(target=self._pump_log, args=(self._process,), name=f"log-{self.label}", daemon=True).start()

    def _pump_log(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace")).rstrip()
            if line:
                self.lines_logged += 1
                self._recent.append((self.lines_logged, line))
                comfy_log.info("[%s] %s", self.label, line)

    def wait_ready(self, timeout_s: float) -> None:
        """Returns once the instance answers HTTP; raises InstanceUnavailable with its last log lines otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_alive():
                time.sleep(0.2)  # let the log pump read the last lines
                raise InstanceUnavailable(
                    f"ComfyUI on {self.label} exited with code {self.exit_code()} while starting; "
                    f"its last log lines:\n{self.log_tail()}"
                )
            if self.client.is_ready():
                return
            time.sleep(0.25)
        raise InstanceUnavailable(
            f"ComfyUI on {self.label} did not answer within {timeout_s:g} s (COMFY_START_TIMEOUT_S); "
            f"its last log lines:\n{self.log_tail()}"
        )

    @property
    def stopping(self) -> bool:
        return self._stopping

    def terminate(self) -> None:
        """Asks the process to exit (SIGTERM); `stop` waits for it."""
        self._stopping = True
        self.healthy = False
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def kill_hung(self) -> None:
        """SIGKILL for a process that stopped answering; the fleet's watcher then restarts it like a crashed one."""
        self.healthy = False
        if self._process is not None and self._process.poll() is None:
            self._process.kill()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after the grace period (ComfyUI does not always exit on SIGTERM)."""
        self.terminate()
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("[%s] ComfyUI ignored SIGTERM for %g s; killing it", self.label, grace_s)
            process.kill()
            process.wait(5)
