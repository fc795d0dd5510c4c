"""Settings: defaults, then a TOML file, then ``SOCIALSYNC_*`` environment, then flags.

Later sources win. Nested sections use ``__`` in the environment
(``SOCIALSYNC_LIMITS__GENERATION=50``). ``VAST_API_KEY`` is honoured as the Vast key
when ``SOCIALSYNC_VAST__API_KEY`` is not set, as the official Vast tools do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_PORT = 8420
CONFIG_NAME = "socialsync.toml"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def _first_dir(var: str) -> Path | None:
    """systemd passes ``StateDirectory=`` etc. as a colon-separated list; we own the first."""
    value = os.environ.get(var)
    return Path(value.split(":")[0]) if value else None


def default_config_path() -> Path:
    base = _first_dir("CONFIGURATION_DIRECTORY")
    if base is not None:
        return base / CONFIG_NAME
    return _xdg("XDG_CONFIG_HOME", ".config") / "socialsync" / CONFIG_NAME


def default_state_dir() -> Path:
    return _first_dir("STATE_DIRECTORY") or _xdg("XDG_DATA_HOME", ".local/share") / "socialsync"


def default_runtime_dir(state_dir: Path) -> Path:
    systemd = _first_dir("RUNTIME_DIRECTORY")
    if systemd is not None:
        return systemd
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "socialsync" if xdg else state_dir / "run"


class LimitSettings(BaseModel):
    """Requests per principal per window (seed "Rate Limiting")."""

    auth: int = 5
    server_management: int = 10
    generation: int = 5
    default: int = 60
    window_seconds: float = 60.0


class VastSettings(BaseModel):
    api_key: SecretStr | None = None
    base_url: str = "https://console.vast.ai"
    min_reliability: float | None = 0.95
    min_direct_ports: int | None = 1
    request_timeout: float = 30.0
    retry_deadline: float = 60.0
    pacing: bool = True
    sync_interval: float = 30.0
    sync_interval_transitioning: float = 5.0
    boot_deadline: float = 900.0
    destroy_on_boot_timeout: bool = True
    label_prefix: str = "socialsync"
    default_image: str = "ghcr.io/ai-dock/comfyui:latest"
    default_disk: float = 40.0


class ComfySettings(BaseModel):
    ready_deadline: float = 600.0
    probe_interval: float = 2.0
    probe_interval_max: float = 15.0
    request_timeout: float = 30.0
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None


class EventSettings(BaseModel):
    ring_size: int = 10_000
    ws_queue: int = 1_000
    ws_heartbeat: float = 20.0
    zmq_endpoint: str | None = None  # default: ipc://<runtime dir>/events.sock
    zmq_hwm: int = 10_000


class SimSettings(BaseModel):
    """The in-process simulators of ``--demo``."""

    boot_seconds: float = 4.0
    step_time: float = 0.15
    offers: int = 24


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SOCIALSYNC_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state_dir: Path = Field(default_factory=default_state_dir)
    runtime_dir: Path | None = None
    demo: bool = False
    log_level: str = "INFO"
    shutdown_timeout: float = 20.0
    trusted_proxies: list[str] = Field(default_factory=list)
    session_ttl_hours: float = 24 * 7
    cookie_secure: bool = False
    max_body_bytes: int = 1 << 20
    limits: LimitSettings = Field(default_factory=LimitSettings)
    vast: VastSettings = Field(default_factory=VastSettings)
    comfy: ComfySettings = Field(default_factory=ComfySettings)
    events: EventSettings = Field(default_factory=EventSettings)
    sim: SimSettings = Field(default_factory=SimSettings)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "socialsync.db"

    @property
    def admin_key_path(self) -> Path:
        return self.state_dir / "admin.key"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def run_dir(self) -> Path:
        return self.runtime_dir or default_runtime_dir(self.state_dir)

    def secrets(self) -> list[str]:
        """Every configured secret, for redaction and for tests that grep for leaks."""
        found = [self.vast.api_key, self.comfy.password, self.comfy.token]
        return [s.get_secret_value() for s in found if s is not None and s.get_secret_value()]


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from every source; ``overrides`` are command-line flags (highest)."""
    path = Path(config_file) if config_file else default_config_path()
    if config_file and not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class _Settings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=path))

    settings = _Settings(**{k: v for k, v in overrides.items() if v is not None})
    if settings.vast.api_key is None and os.environ.get("VAST_API_KEY"):
        settings.vast.api_key = SecretStr(os.environ["VAST_API_KEY"])
    return settings
