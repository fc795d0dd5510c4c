"""``socialsync`` subcommands for scripts: the daemon's API from a shell.

Every command talks to the daemon ``socialsync.tui.connect`` finds. Output is an aligned
plain-text table for people, or with ``--json`` the API's JSON as it came (lists as JSON
arrays), for ``jq``. Errors go to stderr as ``error: <message> (<CODE>)``; the exit
status says what happened (``EXIT_*`` below, listed in ``socialsync --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from socialsync.tui.connect import DEFAULT_URL, ConnectError, Connection, no_key_hint, resolve

EXIT_OK = 0
EXIT_API_ERROR = 1  # the daemon refused: error: <message> (<CODE>)
EXIT_DECLINED = 1  # the operator answered no at the destroy prompt: nothing was done
EXIT_USAGE = 2  # bad arguments (argparse), unusable connection settings
EXIT_UNREACHABLE = 3  # no daemon answered at the URL
EXIT_GENERATION_FAILED = 4  # generate --wait: the generation failed or was cancelled
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_BROKEN_PIPE = 141  # stdout was closed (piped into head): what a shell reports for SIGPIPE

EXIT_CODES_HELP = f"""\
exit status:
  {EXIT_OK}    success
  {EXIT_API_ERROR}    the daemon refused the request (stderr: "error: <message> (<CODE>)";
       with --json the error body is also printed on stdout), or you answered
       no when asked to confirm
  {EXIT_USAGE}    usage error (bad arguments, unreadable key file, destroy without --yes
       when standard input is not a terminal)
  {EXIT_UNREACHABLE}    cannot reach the daemon
  {EXIT_GENERATION_FAILED}    generate --wait: the generation failed or was cancelled
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_BROKEN_PIPE}  standard output was closed (e.g. piped into head)

finding the daemon (first that applies):
  URL  --url, $SOCIALSYNC_URL, url in $XDG_CONFIG_HOME/socialsync/client.toml,
       else {DEFAULT_URL}
  key  --api-key / --api-key-file, $SOCIALSYNC_API_KEY / $SOCIALSYNC_API_KEY_FILE,
       api_key in client.toml; for a loopback URL the local daemon's admin key
       (<state dir>/admin.key: $SOCIALSYNC_STATE_DIR, $STATE_DIRECTORY,
       $XDG_DATA_HOME/socialsync)
"""

TRANSPORTS = ("auto", "ws", "zmq")
EVENT_TYPES_HELP = ("server_status, generation_progress, generation_completed, generation_failed, "
                    "model_download, audit, log")


class UsageError(Exception):
    """A usage error found after parsing (exit 2)."""


# -- the parser -------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Connection and output options. On the top-level parser they carry the defaults;
    on every subcommand they are repeated with SUPPRESS, so ``socialsync servers list
    --json`` and ``socialsync --json servers list`` both work and neither overrides
    the other with a default."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument("--url", default=default(None), metavar="URL",
                       help=f"the daemon's URL (default: $SOCIALSYNC_URL, client.toml, {DEFAULT_URL})")
    group.add_argument("--api-key", default=default(None), metavar="KEY",
                       help="API key (default: $SOCIALSYNC_API_KEY, client.toml, the local admin key)")
    group.add_argument("--api-key-file", default=default(None), metavar="FILE",
                       help="read the API key from FILE (e.g. <state dir>/admin.key)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print the API's JSON instead of tables")
    group.add_argument("--transport", choices=TRANSPORTS, default=default("auto"),
                       help="live events over ZeroMQ (local daemon) or the /ws websocket (default: auto)")
    group.add_argument("--timeout", type=float, default=default(30.0), metavar="SECONDS",
                       help="per-request timeout (default 30)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="socialsync",
        description="SocialSync: the operator's console for a fleet of Vast.ai ComfyUI servers.\n"
                    "With no command it opens the console (TUI) on the daemon; the commands\n"
                    "below are for scripts (add --json for the API's JSON).",
        epilog=EXIT_CODES_HELP,
        formatter_class=_Formatter,
    )
    _global_options(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(parent: Any, name: str, help: str, func: Callable[..., Any] | None = None,
                **kw: Any) -> argparse.ArgumentParser:
        cp = parent.add_parser(name, help=help, description=help, formatter_class=_Formatter, **kw)
        _global_options(cp, suppress=True)
        if func is not None:
            cp.set_defaults(func=func)
        return cp

    def group(name: str, help: str) -> Any:
        gp = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        return gp.add_subparsers(dest="action", metavar="ACTION", required=True)

    # demo
    d = sub.add_parser("demo", help="start a simulated fleet and open the console on it (no account needed)",
                       description="Start a demo daemon (simulated Vast.ai and ComfyUI, all on this machine,\n"
                                   "state in a temporary directory), launch servers on it, and open the\n"
                                   "console. Quitting the console (or Ctrl-C, SIGTERM) stops the daemon.",
                       formatter_class=_Formatter)
    d.add_argument("--port", type=int, default=0, help="the demo daemon's port (default: a free one)")
    d.add_argument("--state-dir", metavar="DIR",
                   help="keep the demo's state in DIR (kept afterwards) instead of a temporary directory")
    d.add_argument("--servers", type=int, default=2, metavar="N", help="servers to launch (default 2)")
    d.add_argument("--headless", action="store_true",
                   help="no console: print how to attach one and run until Ctrl-C or SIGTERM")
    d.add_argument("--json", action="store_true", help="--headless: print the demo's details as one JSON line")
    d.add_argument("--transport", choices=TRANSPORTS, default="auto", help="the console's event transport")

    # servers
    servers = group("servers", "list, launch, stop, start, reboot and destroy servers")
    ls = command(servers, "list", "list the managed servers", cmd_servers_list)
    ls.add_argument("--all", action="store_true", help="include destroyed servers")
    show = command(servers, "show", "one server", cmd_servers_show)
    show.add_argument("id", type=int, metavar="ID")
    launch = command(servers, "launch", "rent an offer and bring ComfyUI up on it", cmd_servers_launch)
    launch.add_argument("offer_id", metavar="OFFER_ID", help="an offer id from `socialsync offers search`")
    launch.add_argument("--image", help="Docker image (default: the daemon's)")
    launch.add_argument("--name", help="a name for the server")
    launch.add_argument("--disk", type=float, metavar="GB", help="disk size in GB")
    launch.add_argument("--onstart", metavar="FILE", help="on-start script to run on the server ('-': stdin)")
    for name, what in (("stop", "stop a server (billing for the GPU stops; disk is still billed)"),
                       ("start", "start a stopped server"),
                       ("reboot", "restart a server's container (the GPU is kept)")):
        cp = command(servers, name, what, cmd_servers_power)
        cp.add_argument("id", type=int, metavar="ID")
    destroy = command(servers, "destroy", "destroy a server at Vast (its disk is lost; billing stops)",
                      cmd_servers_destroy)
    destroy.add_argument("id", type=int, metavar="ID")
    destroy.add_argument("-y", "--yes", action="store_true",
                         help="do not ask (required when standard input is not a terminal)")

    # offers
    offers = group("offers", "search Vast.ai offers")
    search = command(offers, "search", "search rentable offers (cheapest first by default)", cmd_offers_search)
    search.add_argument("--gpu", metavar="NAME", help="GPU name, e.g. 'RTX 4090'")
    search.add_argument("--min-gpus", type=int, metavar="N")
    search.add_argument("--max-gpus", type=int, metavar="N")
    search.add_argument("--min-gpu-ram", type=float, metavar="GB", help="GB per GPU")
    search.add_argument("--max-price", type=float, metavar="USD", help="$ per hour")
    search.add_argument("--min-reliability", type=float, metavar="R", help="0..1")
    search.add_argument("--min-disk", type=float, metavar="GB")
    search.add_argument("--region", help="north-america, europe, asia-pacific, …")
    search.add_argument("--country", metavar="CC", help="two-letter country code")
    search.add_argument("--order", default="price",
                        help="price | -price | reliability | -reliability | gpu_ram | dlperf | score (default price)")
    search.add_argument("--limit", type=int, default=20, metavar="N", help="at most N offers (default 20)")

    # generate
    gen = command(sub, "generate", "generate images on a ready server, or (no SERVER_ID) through the fleet queue",
                  cmd_generate)
    gen.add_argument("server_id", type=int, nargs="?", metavar="SERVER_ID",
                     help="the server; without it the daemon's queue picks a ready one (POST /api/generate)")
    gen.add_argument("prompt", metavar="PROMPT", help="the prompt ('-': read it from stdin)")
    gen.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt")
    gen.add_argument("--width", type=int, metavar="W")
    gen.add_argument("--height", type=int, metavar="H")
    gen.add_argument("--steps", type=int, metavar="N")
    gen.add_argument("--cfg", type=float, metavar="X", help="CFG scale")
    gen.add_argument("--sampler", metavar="S", help="e.g. euler, euler_a, 'DPM++ 2M Karras'")
    gen.add_argument("--scheduler", metavar="S")
    gen.add_argument("--seed", type=int, metavar="N", help="-1 or absent: random (the seed used is stored)")
    gen.add_argument("--checkpoint", metavar="FILE", help="default: the server's first checkpoint")
    gen.add_argument("--batch-size", type=int, metavar="N")
    gen.add_argument("--workflow", type=int, metavar="ID", help="a stored workflow (default: built-in txt2img)")
    gen.add_argument("--priority", type=int, metavar="N", help="queue only: higher goes first (default 0)")
    gen.add_argument("--require", action="append", metavar="MODEL",
                     help="queue only: a model file the server must have (repeatable)")
    gen.add_argument("--webhook", metavar="URL", help="queue only: POSTed (signed) when it ends")
    gen.add_argument("--wait", action="store_true",
                     help="follow the generation's live events until it ends (progress on stderr), "
                          "then print the image URLs; exit 4 if it failed or was cancelled")

    # generations
    gens = group("generations", "list, show and cancel generations")
    gl = command(gens, "list", "generations, newest first", cmd_generations_list)
    gl.add_argument("--server", type=int, metavar="ID", help="only this server's")
    gl.add_argument("--status", choices=("queued", "processing", "completed", "failed", "cancelled"))
    gl.add_argument("--limit", type=int, default=50, metavar="N")
    gl.add_argument("--offset", type=int, default=0, metavar="N")
    gs = command(gens, "show", "one generation", cmd_generations_show)
    gs.add_argument("id", type=int, metavar="ID")
    gc = command(gens, "cancel", "cancel a queued or running generation", cmd_generations_cancel)
    gc.add_argument("id", type=int, metavar="ID")

    # events
    ev = command(sub, "events", "stream live events as JSON lines until interrupted", cmd_events)
    ev.add_argument("--types", metavar="T,T", help=f"only these types ({EVENT_TYPES_HELP})")
    ev.add_argument("--server", type=int, action="append", metavar="ID",
                    help="only events of this server (repeatable)")
    ev.add_argument("-n", "--count", type=int, metavar="N", help="exit after N events")
    ev.add_argument("--snapshot", action="store_true",
                    help="first print the hello: the seq and the snapshot the stream starts from")

    # keys
    keys = group("keys", "create, list and revoke API keys (admin)")
    kc = command(keys, "create", "create an API key; the key is printed once, on stdout", cmd_keys_create)
    kc.add_argument("name", metavar="NAME")
    kc.add_argument("--role", choices=("viewer", "operator", "admin"), default="operator",
                    help="default operator")
    command(keys, "list", "every API key (never the keys themselves)", cmd_keys_list)
    kr = command(keys, "revoke", "revoke an API key", cmd_keys_revoke)
    kr.add_argument("id", type=int, metavar="ID")

    # stats
    command(sub, "stats", "the dashboard figures: servers, queue, spend, credit", cmd_stats)
    command(sub, "queue", "the fleet queue: waiting generations (position, estimated start, what they wait "
            "for) and the dispatched ones", cmd_queue)
    return p


# -- running a command ------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    conn: Connection
    client: Any  # DaemonClient (imported lazily: the parser must load fast)
    out: TextIO
    err: TextIO

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    def emit_json(self, data: Any) -> None:
        self.out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        self.out.flush()

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    async def api(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        return await self.client.request(method, path, json=json, params=params)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; the exit status."""
    out, err = sys.stdout, sys.stderr
    try:
        conn = resolve(args.url, args.api_key, args.api_key_file)
    except ConnectError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    try:
        if getattr(args, "func", None) is cmd_servers_destroy and not args.yes:
            confirmed = confirm_destroy(args, conn, err)
            if confirmed is not None:
                return confirmed
        return asyncio.run(_run(args, conn, out, err))
    except UsageError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`socialsync events | head -1`): say nothing more, and
        # keep Python from complaining about stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


STREAMING = ("events", "generate")  # commands that follow live events (and may use ZeroMQ)


def _client(args: argparse.Namespace, conn: Connection) -> Any:
    if args.command in STREAMING:
        from socialsync.tui.zmq_transport import daemon_client

        return daemon_client(conn.url, conn.api_key, timeout=args.timeout)
    from socialsync.common.client import DaemonClient

    return DaemonClient(conn.url, conn.api_key, timeout=args.timeout)


async def _run(args: argparse.Namespace, conn: Connection, out: TextIO, err: TextIO) -> int:
    from socialsync.common.client import DaemonUnavailable
    from socialsync.common.errors import ApiError

    client = _client(args, conn)
    ctx = Ctx(args, conn, client, out, err)
    try:
        return await args.func(ctx)
    except ApiError as exc:
        report_api_error(ctx, exc)
        return EXIT_API_ERROR
    except DaemonUnavailable as exc:
        report_unreachable(ctx, exc)
        return EXIT_UNREACHABLE
    finally:
        await client.close()


def report_api_error(ctx: Ctx, exc: Any) -> None:
    body = exc.body or {"error": exc.error, "details": exc.details, "code": exc.code}
    ctx.note(f"error: {exc.error} ({exc.code})")
    if exc.details:
        ctx.note(f"  {exc.details}")
    if exc.status == 401 and ctx.conn.api_key is None:
        ctx.note(f"  {no_key_hint()}")
    elif exc.status == 401 and ctx.conn.key_source:
        ctx.note(f"  (the key came from {ctx.conn.key_source})")
    if ctx.json:
        ctx.emit_json(body)


def report_unreachable(ctx: Ctx, exc: BaseException) -> None:
    ctx.note(f"error: cannot reach the daemon at {ctx.conn.url} (from {ctx.conn.url_source})")
    ctx.note(f"  {exc}")
    ctx.note("  is socialsyncd running? (`socialsyncd`, or `socialsync demo` for a simulated fleet)")


def confirm_destroy(args: argparse.Namespace, conn: Connection, err: TextIO) -> int | None:
    """Ask before destroying; an exit status to stop with, or None to go ahead.
    Outside the event loop: a blocking ``input()`` inside it would not see Ctrl-C."""
    if not sys.stdin.isatty():
        err.write("error: destroying a server needs --yes when standard input is not a terminal\n")
        return EXIT_USAGE

    async def fetch(ctx: Ctx) -> int:
        server = await ctx.api("GET", f"/api/vast-servers/{args.id}")
        holder.append(server)
        return EXIT_OK

    holder: list[dict[str, Any]] = []
    status = asyncio.run(_run(argparse.Namespace(**{**vars(args), "func": fetch}), conn, sys.stdout, err))
    if status != EXIT_OK:
        return status
    s = holder[0]
    price = f", ${s['pricePerHour']}/h" if s.get("pricePerHour") else ""
    err.write(f"Destroy server {s['id']} '{s['name']}' ({_gpu(s)}{price}, {s['status']})? "
              "Everything on its disk is lost. [y/N] ")
    err.flush()
    try:
        answer = input()
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        err.write("not destroyed\n")
        return EXIT_DECLINED
    return None


# -- output helpers ---------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """An aligned plain-text table (columns in ``right`` aligned right)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    right_set = set(right)

    def fmt(row: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if i in right_set else v.ljust(widths[i]) for i, v in enumerate(row)]
        return "  ".join(parts).rstrip()

    return "\n".join([fmt(list(headers)), *(fmt(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("\n", " ")


def _when(ts: str | None) -> str:
    return ts[:19].replace("T", " ") if ts else "-"


def _gpu(s: dict[str, Any]) -> str:
    gpu = s.get("gpu") or "-"
    count = s.get("gpuCount")
    return f"{count}x {gpu}" if count and count > 1 else gpu


def _short(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _absolute(ctx: Ctx, url: str) -> str:
    return ctx.conn.url + url if url.startswith("/") else url


# -- servers ----------------------------------------------------------------------------


SERVER_HEADERS = ("ID", "NAME", "STATUS", "SETUP", "GPU", "$/H", "LOCATION", "COMFYUI")


def _server_row(s: dict[str, Any]) -> list[Any]:
    return [s["id"], s["name"], s["status"], s["setupStatus"], _gpu(s), s.get("pricePerHour"),
            s.get("location"), s.get("serverUrl")]


async def cmd_servers_list(ctx: Ctx) -> int:
    servers = await ctx.api("GET", "/api/vast-servers", params={"include": "destroyed" if ctx.args.all else None})
    if ctx.json:
        ctx.emit_json(servers)
    elif not servers:
        ctx.note("no servers (find an offer with `socialsync offers search`, then `socialsync servers launch "
                 "OFFER_ID`)")
    else:
        ctx.line(table(SERVER_HEADERS, (_server_row(s) for s in servers), right=(0, 5)))
    return EXIT_OK


async def cmd_servers_show(ctx: Ctx) -> int:
    s = await ctx.api("GET", f"/api/vast-servers/{ctx.args.id}")
    if ctx.json:
        ctx.emit_json(s)
        return EXIT_OK
    fields = [("id", s["id"]), ("name", s["name"]), ("vast id", s.get("vastId")), ("status", s["status"]),
              ("setup", s["setupStatus"]), ("message", s.get("statusMessage")), ("gpu", _gpu(s)),
              ("cpu cores", s.get("cpuCores")), ("ram", f"{s['ram']} GB" if s.get("ram") else None),
              ("disk", f"{s['disk']} GB" if s.get("disk") else None),
              ("price", f"${s['pricePerHour']}/h" if s.get("pricePerHour") else None),
              ("location", s.get("location")), ("comfyui", s.get("serverUrl")), ("ssh", s.get("sshConnection")),
              ("created", _when(s.get("createdAt"))), ("updated", _when(s.get("updatedAt")))]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        ctx.line(f"{key.ljust(width)}  {_cell(value)}")
    return EXIT_OK


def _read_onstart(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read the on-start script {path}: {exc.strerror or exc}") from exc


async def cmd_servers_launch(ctx: Ctx) -> int:
    a = ctx.args
    body: dict[str, Any] = {"offerId": a.offer_id}
    if a.image:
        body["image"] = a.image
    if a.name:
        body["name"] = a.name
    if a.disk is not None:
        body["disk"] = a.disk
    if a.onstart:
        body["onStartScript"] = _read_onstart(a.onstart)
    launched = await ctx.api("POST", "/api/vast-servers", json=body)
    if ctx.json:
        ctx.emit_json(launched)
    else:
        ctx.line(f"server {launched['id']} {launched['status']} (vast instance {launched.get('vastId') or '-'}): "
                 f"{launched.get('message', '')}")
    return EXIT_OK


async def cmd_servers_power(ctx: Ctx) -> int:
    sid, action = ctx.args.id, ctx.args.action
    if action == "reboot":
        server = await ctx.api("POST", f"/api/vast-servers/{sid}/reboot")
    else:
        status = "stopped" if action == "stop" else "running"
        server = await ctx.api("PATCH", f"/api/vast-servers/{sid}", json={"status": status})
    if ctx.json:
        ctx.emit_json(server)
    else:
        verb = {"stop": "stopping", "start": "starting", "reboot": "rebooting"}[action]
        ctx.line(f"server {server['id']} '{server['name']}' {verb}: now {server['status']}/{server['setupStatus']}")
    return EXIT_OK


async def cmd_servers_destroy(ctx: Ctx) -> int:
    result = await ctx.api("DELETE", f"/api/vast-servers/{ctx.args.id}")
    if ctx.json:
        ctx.emit_json(result)
    else:
        ctx.line(f"server {ctx.args.id}: {result.get('message', 'destroyed')}")
    return EXIT_OK


# -- offers -----------------------------------------------------------------------------


async def cmd_offers_search(ctx: Ctx) -> int:
    a = ctx.args
    params = {"gpuName": a.gpu, "minGpus": a.min_gpus, "maxGpus": a.max_gpus, "minGpuRam": a.min_gpu_ram,
              "maxPrice": a.max_price, "minReliability": a.min_reliability, "minDisk": a.min_disk,
              "region": a.region, "country": a.country, "order": a.order, "limit": a.limit}
    offers = await ctx.api("GET", "/api/vast-offers", params=params)
    if ctx.json:
        ctx.emit_json(offers)
    elif not offers:
        ctx.note("no offers match")
    else:
        headers = ("OFFER", "GPU", "VRAM", "CPU", "RAM", "DISK", "$/H", "RELIAB", "DLPERF", "LOCATION")
        rows = [[o["offerId"], _gpu(o), _gb(o.get("gpuRam")), o.get("cpuCores"), _gb(o.get("ram")),
                 _gb(o.get("disk")), o["pricePerHour"],
                 f"{o['reliability']:.3f}" if o.get("reliability") is not None else None,
                 o.get("dlperf"), o.get("location")] for o in offers]
        ctx.line(table(headers, rows, right=(2, 3, 4, 5, 6, 7, 8)))
    return EXIT_OK


def _gb(value: float | None) -> str | None:
    return None if value is None else f"{value:g} GB"


# -- generations ------------------------------------------------------------------------


def _generate_body(a: argparse.Namespace) -> dict[str, Any]:
    prompt = sys.stdin.read().strip() if a.prompt == "-" else a.prompt
    if not prompt:
        raise UsageError("the prompt is empty")
    parameters = {"width": a.width, "height": a.height, "steps": a.steps, "cfg_scale": a.cfg,
                  "sampler": a.sampler, "scheduler": a.scheduler, "seed": a.seed, "checkpoint": a.checkpoint,
                  "batchSize": a.batch_size}
    body: dict[str, Any] = {"prompt": prompt,
                            "parameters": {k: v for k, v in parameters.items() if v is not None}}
    if a.negative is not None:
        body["negativePrompt"] = a.negative
    if a.workflow is not None:
        body["workflowId"] = a.workflow
    return body


async def cmd_generate(ctx: Ctx) -> int:
    a = ctx.args
    body = _generate_body(a)
    queued = a.server_id is None
    if queued:
        path = "/api/generate"
        extra = {"priority": a.priority, "requiredModels": a.require, "webhookUrl": a.webhook}
        body.update({k: v for k, v in extra.items() if v is not None})
    elif a.priority is not None or a.require or a.webhook:
        raise UsageError("--priority, --require and --webhook are for the fleet queue: leave out SERVER_ID")
    else:
        path = f"/api/comfy/{a.server_id}/generate"
    if not a.wait:
        started = await ctx.api("POST", path, json=body)
        if ctx.json:
            ctx.emit_json(started)
        else:
            where = (f"queued at position {started.get('position', '?')}" if queued
                     else f"started on server {a.server_id}")
            ctx.line(f"generation {started['generationId']} {where} "
                     f"(estimated {started.get('estimatedTime', '?')}); follow it with `socialsync generations "
                     f"show {started['generationId']}` or `socialsync events`")
        return EXIT_OK
    return await wait_for_generation(ctx, path, body)


async def cmd_queue(ctx: Ctx) -> int:
    view = await ctx.api("GET", "/api/queue")
    if ctx.json:
        ctx.emit_json(view)
        return EXIT_OK
    ctx.line(f"{view['waiting']} waiting, {view['running']} dispatched; {view['servers']} ready server(s), "
             f"{view['slots']} free slot(s) of {view['perServerConcurrency']} per server")
    rows = [[str(i["generationId"]), str(i.get("position") or ""), i["status"], str(i.get("serverId") or ""),
             i["principal"], str(i["priority"]), i.get("estimatedStart") or "", i.get("waitingFor") or ""]
            for i in view["items"]]
    if rows:
        ctx.line(table(["ID", "POS", "STATUS", "SERVER", "PRINCIPAL", "PRIO", "EST. START", "WAITING FOR"], rows,
                       right=(0, 1, 5)))
    return EXIT_OK


FINAL = ("completed", "failed", "cancelled")


async def wait_for_generation(ctx: Ctx, path: str, body: dict[str, Any]) -> int:
    """Subscribe first, then submit, then follow the generation's events to its end: no
    event can slip between the submission and the subscription, and nothing polls."""
    from socialsync.common.client import DaemonUnavailable, Disconnected, Hello, Reconnected, Resnapshot
    from socialsync.common.events import (
        GENERATION_COMPLETED,
        GENERATION_FAILED,
        GENERATION_PROGRESS,
        Envelope,
    )

    sid = ctx.args.server_id  # None through the queue: the server is not known yet
    stream = ctx.client.events(types=[GENERATION_PROGRESS, GENERATION_COMPLETED, GENERATION_FAILED],
                               server_ids=[sid] if sid is not None else None, transport=ctx.args.transport)
    async with stream:
        async for item in stream:
            if isinstance(item, Hello):
                break
            if isinstance(item, Disconnected):
                raise DaemonUnavailable(item.reason)
        started = await ctx.api("POST", path, json=body)
        gid = int(started["generationId"])
        bar = ProgressBar(gid, ctx.err)
        bar.started(started)
        final: dict[str, Any] | None = None
        try:
            async for item in stream:
                if isinstance(item, Envelope):
                    data = item.data
                    if _as_int(data.get("generationId")) != gid:
                        continue
                    if item.type == GENERATION_PROGRESS:
                        bar.update(int(data.get("progress") or 0), str(data.get("status") or ""),
                                   data.get("step"), data.get("steps"))
                    elif item.type in (GENERATION_COMPLETED, GENERATION_FAILED):
                        break
                elif isinstance(item, Hello) and item.snapshot is not None:
                    # Reconnected with a fresh snapshot: the end may have been missed.
                    g = await ctx.api("GET", f"/api/generations/{gid}")
                    if g["status"] in FINAL:
                        final = g
                        break
                elif isinstance(item, Disconnected):
                    bar.note(f"connection to the daemon lost ({item.reason}); retrying in {item.retry_in:.1f} s")
                elif isinstance(item, Reconnected):
                    bar.note(f"reconnected after {item.downtime:.1f} s")
                elif isinstance(item, Resnapshot):
                    bar.note(f"events were missed ({item.reason}); re-synchronising")
        except asyncio.CancelledError:
            bar.finish()
            ctx.note(f"generation {gid} goes on in the daemon; cancel it with `socialsync generations cancel {gid}`")
            raise
    if final is None:
        final = await ctx.api("GET", f"/api/generations/{gid}")
    bar.finish(final)
    if ctx.json:
        ctx.emit_json(final)
    if final["status"] != "completed":
        ctx.note(f"error: generation {gid} {final['status']}: {final.get('error') or 'no reason given'}")
        return EXIT_GENERATION_FAILED
    if not ctx.json:
        for url in final.get("imageUrls") or []:
            ctx.line(_absolute(ctx, url))
    return EXIT_OK


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class ProgressBar:
    """A generation's progress on stderr: a redrawn bar on a terminal, otherwise a line
    each time it passes a multiple of 10 %."""

    WIDTH = 30

    def __init__(self, gid: int, stream: TextIO):
        self.gid = gid
        self.stream = stream
        self.tty = stream.isatty()
        self.drawn = False
        self.last_decile = -1
        self.progress = 0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def started(self, response: dict[str, Any]) -> None:
        msg = f"generation {self.gid} queued (estimated {response.get('estimatedTime', '?')})"
        self._write(msg + "\n")

    def update(self, progress: int, status: str, step: Any = None, steps: Any = None) -> None:
        progress = max(0, min(100, progress))
        self.progress = progress
        detail = f" step {step}/{steps}" if step is not None and steps else ""
        if self.tty:
            filled = self.WIDTH * progress // 100
            bar = "█" * filled + "░" * (self.WIDTH - filled)
            self._write(f"\r\x1b[2Kgeneration {self.gid} {bar} {progress:3d}% {status}{detail}")
            self.drawn = True
        else:
            decile = progress // 10 * 10
            if decile > self.last_decile:
                self.last_decile = decile
                self._write(f"generation {self.gid}: {decile}% {status}{detail}\n")

    def note(self, text: str) -> None:
        if self.drawn:
            self._write("\n")
            self.drawn = False
        self._write(text + "\n")

    def finish(self, final: dict[str, Any] | None = None) -> None:
        if final is not None and final.get("status") == "completed":
            self.update(100, "completed")
        if self.drawn:
            self._write("\n")
            self.drawn = False
        if final is not None and final.get("status") == "completed":
            seconds = f" in {final['durationMs'] / 1000:.1f} s" if final.get("durationMs") else ""
            n = len(final.get("imageUrls") or [])
            self._write(f"generation {self.gid} completed{seconds}: {n} image{'s' if n != 1 else ''}\n")


GENERATION_HEADERS = ("ID", "SERVER", "STATUS", "PROGRESS", "CREATED", "SECONDS", "IMAGES", "PROMPT")


def _generation_row(g: dict[str, Any]) -> list[Any]:
    seconds = f"{g['durationMs'] / 1000:.1f}" if g.get("durationMs") else None
    return [g["id"], g.get("serverId"), g["status"], f"{g.get('progress', 0)}%", _when(g.get("createdAt")),
            seconds, len(g.get("imageUrls") or []), _short(g.get("prompt"), 50)]


async def cmd_generations_list(ctx: Ctx) -> int:
    a = ctx.args
    params = {"status": a.status, "limit": a.limit, "offset": a.offset}
    if a.server is not None:
        gens = await ctx.api("GET", f"/api/comfy/{a.server}/generations", params=params)
    else:
        gens = await ctx.api("GET", "/api/generations", params=params)
    if ctx.json:
        ctx.emit_json(gens)
    elif not gens:
        ctx.note("no generations")
    else:
        ctx.line(table(GENERATION_HEADERS, (_generation_row(g) for g in gens), right=(0, 1, 3, 5, 6)))
    return EXIT_OK


async def cmd_generations_show(ctx: Ctx) -> int:
    g = await ctx.api("GET", f"/api/generations/{ctx.args.id}")
    _print_generation(ctx, g)
    return EXIT_OK


async def cmd_generations_cancel(ctx: Ctx) -> int:
    g = await ctx.api("DELETE", f"/api/generations/{ctx.args.id}")
    _print_generation(ctx, g)
    return EXIT_OK


def _print_generation(ctx: Ctx, g: dict[str, Any]) -> None:
    if ctx.json:
        ctx.emit_json(g)
        return
    params = g.get("parameters") or {}
    fields = [("id", g["id"]), ("server", g.get("serverId")), ("status", g["status"]),
              ("progress", f"{g.get('progress', 0)}%"), ("prompt", g.get("prompt")),
              ("negative", g.get("negativePrompt") or None), ("seed", g.get("seed")),
              ("checkpoint", g.get("checkpoint")),
              ("parameters", ", ".join(f"{k}={v}" for k, v in params.items()) or None),
              ("error", g.get("error")), ("created", _when(g.get("createdAt"))),
              ("completed", _when(g.get("completedAt")))]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        ctx.line(f"{key.ljust(width)}  {_cell(value)}")
    for url in g.get("imageUrls") or []:
        ctx.line(f"{'image'.ljust(width)}  {_absolute(ctx, url)}")


# -- events -----------------------------------------------------------------------------


async def cmd_events(ctx: Ctx) -> int:
    from socialsync.common.client import Disconnected, Hello, Reconnected, Resnapshot
    from socialsync.common.events import Envelope

    a = ctx.args
    types = [t.strip() for t in a.types.split(",") if t.strip()] if a.types else None
    if a.count is not None and a.count < 1:
        raise UsageError("--count must be at least 1")
    # One plain request first: an unreachable daemon or a refused key is an exit status
    # (3 or 1) here, instead of a stream that retries forever.
    await ctx.client.events_info()
    seen = 0
    async with ctx.client.events(types=types, server_ids=a.server, transport=a.transport) as stream:
        async for item in stream:
            if isinstance(item, Envelope):
                ctx.out.write(json.dumps(item.model_dump(mode="json"), ensure_ascii=False,
                                         separators=(",", ":")) + "\n")
                ctx.out.flush()
                seen += 1
                if a.count is not None and seen >= a.count:
                    return EXIT_OK
            elif isinstance(item, Hello):
                if a.snapshot and item.snapshot is not None:
                    hello = {"type": "hello", "seq": item.seq, "epoch": item.epoch,
                             "snapshot": item.snapshot.model_dump(mode="json")}
                    ctx.out.write(json.dumps(hello, ensure_ascii=False, separators=(",", ":")) + "\n")
                    ctx.out.flush()
            elif isinstance(item, Disconnected):
                ctx.note(f"events: disconnected ({item.reason}); retrying in {item.retry_in:.1f} s")
            elif isinstance(item, Reconnected):
                ctx.note(f"events: reconnected after {item.downtime:.1f} s over {item.transport}")
            elif isinstance(item, Resnapshot):
                ctx.note(f"events: some events were missed ({item.reason})")
    return EXIT_OK


# -- keys -------------------------------------------------------------------------------


async def cmd_keys_create(ctx: Ctx) -> int:
    created = await ctx.api("POST", "/api/api-keys", json={"name": ctx.args.name, "role": ctx.args.role})
    if ctx.json:
        ctx.emit_json(created)
    else:
        # The key alone on stdout (KEY=$(socialsync keys create ci)); the rest on stderr.
        ctx.note(f"API key {created['id']} '{created['name']}' ({created['role']}) created; "
                 "it is shown this once and cannot be recovered:")
        ctx.line(created["key"])
    return EXIT_OK


async def cmd_keys_list(ctx: Ctx) -> int:
    keys = await ctx.api("GET", "/api/api-keys")
    if ctx.json:
        ctx.emit_json(keys)
    else:
        headers = ("ID", "NAME", "ROLE", "PREFIX", "CREATED", "LAST USED", "REVOKED")
        rows = [[k["id"], k["name"], k["role"], k.get("prefix"), _when(k.get("createdAt")),
                 _when(k.get("lastUsedAt")), _when(k.get("revokedAt"))] for k in keys]
        ctx.line(table(headers, rows, right=(0,)))
    return EXIT_OK


async def cmd_keys_revoke(ctx: Ctx) -> int:
    revoked = await ctx.api("DELETE", f"/api/api-keys/{ctx.args.id}")
    if ctx.json:
        ctx.emit_json(revoked)
    else:
        ctx.line(f"API key {revoked['id']} '{revoked['name']}' revoked")
    return EXIT_OK


# -- stats ------------------------------------------------------------------------------


async def cmd_stats(ctx: Ctx) -> int:
    s = await ctx.api("GET", "/api/stats")
    if ctx.json:
        ctx.emit_json(s)
        return EXIT_OK
    servers, gens, spend = s.get("servers", {}), s.get("generations", {}), s.get("spend", {})
    ctx.line(f"servers      {servers.get('total', 0)} ({servers.get('ready', 0)} ready)")
    ctx.line(f"generations  {gens.get('queued', 0)} queued, {gens.get('processing', 0)} processing, "
             f"{gens.get('completedToday', 0)} completed today, {gens.get('failedLastHour', 0)} failed "
             "in the last hour")
    ctx.line(f"spend        ${spend.get('today', '0')} today, ${spend.get('thisMonth', '0')} this month, "
             f"burning ${spend.get('burnRate', '0')}/h")
    if s.get("vastCredit") is not None:
        ctx.line(f"vast credit  ${s['vastCredit']}")
    return EXIT_OK
