"""Reading one environment variable: a value that is not usable is refused with the variable's name."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
NETWORK_VOLUME = Path("/runpod-volume")


class SettingsError(ValueError):
    """An environment variable holds a value the worker cannot use."""


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    meaning: str
    group: str


def quiet_runpod_sdk() -> None:
    """Gives the RunPod SDK our RUNPOD_LOG_LEVEL default; call it before `import runpod`, which reads it."""
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")


class EnvReader:
    """The typed readers every settings group uses; only declared variables can be read."""

    def __init__(self, env: Mapping[str, str] | None, known: set[str]) -> None:
        self.env = os.environ if env is None else env
        self.known = known

    def raw(self, name: str) -> str:
        assert name in self.known, name
        return self.env.get(name, "").strip()

    def number(self, name: str, default: float, minimum: float = 0) -> float:
        text = self.raw(name)
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(f"{name}={text!r} is not a number") from None
        if value < minimum:
            raise SettingsError(f"{name}={text!r} must be at least {minimum:g}")
        return value

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.number(name, default, minimum)
        if value != int(value):
            raise SettingsError(f"{name}={self.raw(name)!r} must be a whole number")
        return int(value)

    def flag(self, name: str, default: bool) -> bool:
        text = self.raw(name).lower()
        if not text:
            return default
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={text!r} is not a switch: use 1 or 0")

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.raw(name).lower() or allowed[0]
        if value not in allowed:
            raise SettingsError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        return value

    def paths(self, name: str) -> tuple[Path, ...]:
        return tuple(Path(p).expanduser() for p in self.raw(name).split(os.pathsep) if p)

    def work_dir(self) -> Path:
        """COMFY_WORK_DIR: the default place of the caches too."""
        return Path(self.raw("COMFY_WORK_DIR") or REPO_ROOT / ".work").expanduser()
