"""The worker's configuration: the only package that reads environment variables.

Each group of settings is a small dataclass in its own module, with its variables (name, default, meaning) declared
beside it; VARIABLES joins them, docs/configuration.md lists the same table and a test keeps the two in agreement.
`Settings` is every group in one flat object, so code reads `settings.job_timeout_s`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from comfy_worker.settings.fleet import FLEET, FleetSettings, comfy_cache_flags, loopback_host
from comfy_worker.settings.jobs import JOBS, JobSettings
from comfy_worker.settings.models import MODELS, ModelSettings
from comfy_worker.settings.outputs import OUTPUT_MODES, OUTPUTS, OutputSettings, S3Config, split_bucket_endpoint
from comfy_worker.settings.performance import PERFORMANCE, PerformanceSettings
from comfy_worker.settings.process import PROCESS, ProcessSettings
from comfy_worker.settings.reader import REPO_ROOT, EnvReader, SettingsError, Variable, quiet_runpod_sdk

VARIABLES: tuple[Variable, ...] = FLEET + PERFORMANCE + JOBS + MODELS + OUTPUTS + PROCESS
GROUPS = (FleetSettings, PerformanceSettings, JobSettings, ModelSettings, OutputSettings, ProcessSettings)

__all__ = ["OUTPUT_MODES", "REPO_ROOT", "VARIABLES", "S3Config", "Settings", "SettingsError", "Variable",
           "comfy_cache_flags", "load_settings", "loopback_host", "quiet_runpod_sdk", "split_bucket_endpoint"]


@dataclass(frozen=True)
class Settings(ProcessSettings, OutputSettings, ModelSettings, JobSettings, PerformanceSettings, FleetSettings):
    """Every group's fields in one object."""


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Reads the configuration from `env` (default: the process environment)."""
    reader = EnvReader(env, {v.name for v in VARIABLES})
    groups = [group.read(reader) for group in (OutputSettings, FleetSettings, PerformanceSettings, JobSettings,
                                                ModelSettings, ProcessSettings)]
    return Settings(**{f.name: getattr(group, f.name) for group in groups for f in fields(group)})
