"""Settings: defaults, then a TOML file, then ``SOCIALSYNC_*`` environment, then flags.

Later sources win. Nested sections use ``__`` in the environment
(``SOCIALSYNC_LIMITS__GENERATION=50``). ``VAST_API_KEY`` is honoured as the Vast key
when ``SOCIALSYNC_VAST__API_KEY`` is not set, as the official Vast tools do.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

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
    retry_base: float = 0.5
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
    health_interval: float = 30.0
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
    # Log records at this level and above are also published as ``log`` events (the
    # console's log pane, /ws, ZeroMQ), at most ``log_rate`` a second; "off": none.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "off"] = "WARNING"
    log_rate: int = Field(default=20, ge=1)


class CostSettings(BaseModel):
    """Cost control, enforced by the costs loop and the launch guard. Money is a decimal
    string ("25.00"); ``None`` switches a rule off."""

    idle_stop_minutes: float | None = Field(default=None, gt=0, description="stop a ready server idle this long")
    idle_action: Literal["stop", "destroy"] = "stop"
    daily_cap: Decimal | None = Field(default=None, ge=0, description="$ per UTC day")
    monthly_cap: Decimal | None = Field(default=None, ge=0, description="$ per UTC month")
    max_price_per_hour: Decimal | None = Field(default=None, gt=0, description="refuse offers above this $/h")
    launch_horizon_hours: float = Field(default=1.0, ge=0, description="a launch must fit under the caps this long")
    check_interval: float = Field(default=60.0, gt=0, description="seconds between cost checks")
    metrics_auth: bool = True  # /metrics needs a viewer credential


class ModelSettings(BaseModel):
    """Model downloads: hub tokens, SSH to the servers, the remote fetch program."""

    hf_token: SecretStr | None = None
    civitai_token: SecretStr | None = None
    #: Hosts (and their subdomains) that receive the matching token; only over https
    #: (or loopback). Never sent anywhere else, nor on a redirect to another host.
    hf_hosts: list[str] = Field(default_factory=lambda: ["huggingface.co", "hf.co"])
    civitai_hosts: list[str] = Field(default_factory=lambda: ["civitai.com"])
    comfy_root: str = "/workspace/ComfyUI"  # ComfyUI's directory on a rented server
    python: str = "python3"
    ssh_user: str = "root"
    ssh_connect_timeout: float = 20.0
    ssh_host_key_policy: Literal["tofu", "accept"] = "tofu"  # tofu: remember each server's key on first use
    download_deadline: float = 6 * 3600.0
    stall_timeout: float = 120.0  # a download with no byte for this long is retried (resumed)
    attempts: int = 6  # SSH runs per download (each resumes where the last stopped)
    retry_base: float = 2.0
    progress_interval: float = 0.5  # the remote program's progress lines
    event_interval: float = 0.25  # model_download events: at most 4/s per download
    max_per_server: int = 2
    manager_poll: float = 2.0


class SimSettings(BaseModel):
    """The in-process simulators of ``--demo``."""

    boot_seconds: float = 4.0
    step_time: float = 0.15
    offers: int = 24


class SchedulerSettings(BaseModel):
    """The durable queue of ``POST /api/generate``: dispatch, fairness, webhooks, the
    dead-man switch of launched servers and the optional autoscaling rule."""

    per_server_concurrency: int = Field(default=2, ge=1, le=64, description="prompts in one ComfyUI queue")
    max_attempts: int = Field(default=3, ge=1, le=20, description="dispatches of one generation")
    principal_queue_cap: int | None = Field(default=None, ge=1, description="queued items per principal")
    safety_interval: float = Field(default=2.0, gt=0, description="seconds between wake-ups while blocked")
    webhook_secret: SecretStr | None = None  # default: a random secret kept in <state>/webhook.secret
    webhook_default_url: str | None = None
    webhook_allow_private: bool = False
    webhook_retry_deadline: float = Field(default=3600.0, gt=0, description="seconds of retries per delivery")
    webhook_retry_base: float = Field(default=2.0, gt=0)
    webhook_retry_max: float = Field(default=300.0, gt=0)
    webhook_timeout: float = Field(default=10.0, gt=0)
    deadman_timeout: float | None = Field(default=1800.0, ge=0,
                                          description="seconds without a lease before a launched server stops "
                                                      "itself; 0 or null: no dead-man switch")
    deadman_renew_interval: float = Field(default=60.0, gt=0)
    deadman_grace: float = Field(default=3600.0, ge=0, description="extra time for the first lease after boot")
    deadman_check_interval: int = Field(default=15, ge=1, le=600, description="the container's check period")
    autoscale: bool = False
    queue_wait_threshold: float = Field(default=300.0, gt=0, description="seconds the oldest item waited")
    autoscale_max_servers: int = Field(default=4, ge=1)
    autoscale_cooldown: float = Field(default=600.0, ge=0)
    autoscale_gpu_name: str | None = None
    autoscale_min_gpu_ram: float | None = None
    autoscale_max_price: float | None = None
    autoscale_image: str | None = None


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
    models: ModelSettings = Field(default_factory=ModelSettings)
    costs: CostSettings = Field(default_factory=CostSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)

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
        found = [self.vast.api_key, self.comfy.password, self.comfy.token,
                 self.models.hf_token, self.models.civitai_token, self.scheduler.webhook_secret]
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
    for field, var in (("hf_token", "HF_TOKEN"), ("civitai_token", "CIVITAI_TOKEN")):
        if getattr(settings.models, field) is None and os.environ.get(var):
            setattr(settings.models, field, SecretStr(os.environ[var]))
    return settings
