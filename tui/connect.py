"""How ``socialsync`` finds its daemon: the URL and the API key, each from the first
source that has it.

URL:
  1. ``--url``
  2. ``$SOCIALSYNC_URL``
  3. ``url`` in the console's config file, ``$XDG_CONFIG_HOME/socialsync/client.toml``
  4. the local daemon's default, ``http://127.0.0.1:8420``

API key:
  1. ``--api-key``, or ``--api-key-file FILE``
  2. ``$SOCIALSYNC_API_KEY``, or ``$SOCIALSYNC_API_KEY_FILE``
  3. ``api_key`` (or ``api_key_file``) in ``client.toml``, used only with that file's
     own ``url`` (a key is never sent to a daemon it was not written down for)
  4. for a daemon on this machine (a loopback URL) only: the local daemon's admin key
     file, ``admin.key`` in its state directory: ``$SOCIALSYNC_STATE_DIR``,
     ``$STATE_DIRECTORY``, ``$XDG_DATA_HOME/socialsync`` (``~/.local/share/socialsync``),
     then ``/var/lib/socialsync`` (the systemd unit's; readable by root only)

This module reads files and the environment only; it never talks to the daemon.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

DEFAULT_PORT = 8420
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
CONFIG_NAME = "client.toml"
ADMIN_KEY = "admin.key"
SYSTEM_STATE_DIR = Path("/var/lib/socialsync")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class ConnectError(Exception):
    """The connection settings are unusable (a key file that cannot be read, a bad URL,
    a config file that is not TOML): a usage error, not the daemon's fault."""


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str | None
    url_source: str  # "--url", "$SOCIALSYNC_URL", the config file's path, "default"
    key_source: str | None  # where the key came from, None when there is none

    def describe(self) -> str:
        key = f"key from {self.key_source}" if self.key_source else "no API key"
        return f"{self.url} (from {self.url_source}; {key})"


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "socialsync" / CONFIG_NAME


def state_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where a daemon on this machine keeps its admin key, most specific first."""
    env = os.environ if environ is None else environ
    dirs: list[Path] = []
    if env.get("SOCIALSYNC_STATE_DIR"):
        dirs.append(Path(env["SOCIALSYNC_STATE_DIR"]))
    if env.get("STATE_DIRECTORY"):
        dirs.append(Path(env["STATE_DIRECTORY"].split(":")[0]))
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    dirs.append(Path(data) / "socialsync")
    dirs.append(SYSTEM_STATE_DIR)
    return dirs


def read_key_file(path: str | os.PathLike[str]) -> str:
    """The key in a file (surrounding whitespace stripped); ``ConnectError`` when the
    file cannot be read or is empty."""
    p = Path(path).expanduser()
    try:
        key = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConnectError(f"cannot read the API key file {p}: {exc.strerror or exc}") from exc
    if not key:
        raise ConnectError(f"the API key file {p} is empty")
    return key


def load_config(path: Path) -> dict[str, object]:
    """The client config file as a dict ({} when there is none)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConnectError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConnectError(f"{path} is not valid TOML: {exc}") from exc


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConnectError(f"not a daemon URL: {url!r} (expected http://HOST:PORT)")
    return url


def is_loopback(url: str) -> bool:
    return (URL(url).host or "") in LOOPBACK


def resolve(
    url: str | None = None,
    api_key: str | None = None,
    api_key_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Connection:
    """Where the daemon is and the key to send it (see the module's docstring)."""
    env = os.environ if environ is None else environ
    cfg_path = config_path(env)
    cfg = load_config(cfg_path)
    cfg_url = cfg.get("url")
    if cfg_url is not None and not isinstance(cfg_url, str):
        raise ConnectError(f"{cfg_path}: url must be a string")
    cfg_url = normalize_url(cfg_url) if cfg_url else None

    if url:
        resolved, url_source = normalize_url(url), "--url"
    elif env.get("SOCIALSYNC_URL"):
        resolved, url_source = normalize_url(env["SOCIALSYNC_URL"]), "$SOCIALSYNC_URL"
    elif cfg_url:
        resolved, url_source = cfg_url, str(cfg_path)
    else:
        resolved, url_source = DEFAULT_URL, "default"

    if api_key and api_key_file:
        raise ConnectError("give --api-key or --api-key-file, not both")
    if api_key:
        return Connection(resolved, api_key.strip(), url_source, "--api-key")
    if api_key_file:
        return Connection(resolved, read_key_file(api_key_file), url_source, f"--api-key-file {api_key_file}")
    if env.get("SOCIALSYNC_API_KEY"):
        return Connection(resolved, env["SOCIALSYNC_API_KEY"].strip(), url_source, "$SOCIALSYNC_API_KEY")
    if env.get("SOCIALSYNC_API_KEY_FILE"):
        return Connection(resolved, read_key_file(env["SOCIALSYNC_API_KEY_FILE"]), url_source,
                          "$SOCIALSYNC_API_KEY_FILE")

    # The config file's key belongs to the config file's daemon (or to any, if the file
    # names none): never hand it to a daemon given on the command line.
    if cfg_url is None or cfg_url == resolved:
        key = cfg.get("api_key")
        if isinstance(key, str) and key.strip():
            return Connection(resolved, key.strip(), url_source, str(cfg_path))
        key_file = cfg.get("api_key_file")
        if isinstance(key_file, str) and key_file:
            return Connection(resolved, read_key_file(key_file), url_source, f"{cfg_path} (api_key_file)")

    # The local daemon's admin key, and only for a daemon on this machine: sending it
    # anywhere else would hand a stranger the keys of this one.
    if is_loopback(resolved):
        for d in state_dirs(env):
            path = d / ADMIN_KEY
            try:
                key = path.read_text(encoding="utf-8").strip()
            except OSError:
                continue
            if key:
                return Connection(resolved, key, url_source, str(path))
    return Connection(resolved, None, url_source, None)


NO_KEY_HINT = (
    "no API key was found: pass --api-key or --api-key-file, set SOCIALSYNC_API_KEY, or put "
    "api_key in {config}; on the daemon's machine the admin key is <state dir>/admin.key"
)


def no_key_hint(environ: Mapping[str, str] | None = None) -> str:
    return NO_KEY_HINT.format(config=config_path(environ))
