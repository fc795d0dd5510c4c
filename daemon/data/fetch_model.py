# ruff: noqa: UP031, UP041 - stays runnable on the Python 3.8 of an old image (socket.timeout is not TimeoutError there)
"""Download one model file on a ComfyUI server (sent over SSH, run by the server's python3).

Not imported by the daemon: its text is written to the SSH channel's stdin after a
length line, and a fixed one-line bootstrap on the command line runs it. Standard library
only; runs on Python 3.8+.

    argv:  DEST_DIR FILENAME SHA256|-
    stdin: one JSON line after the program:
           {"url": str, "authorization": str|null, "auth_hosts": [..], "progress_interval": s,
            "stall_timeout": s, "attempts": n, "user_agent": str}
           (the URL too: a signed URL's query is a credential, and a command line is
           visible to every process on the server and logged)

The file is fetched into ``DEST_DIR/.FILENAME.part`` with HTTP Range resume, checked
against SHA256 when given, and renamed to ``DEST_DIR/FILENAME`` only when complete and
matching. Progress and the outcome go to stdout as JSON lines. The authorization value
comes from stdin only, is sent only to ``auth_hosts`` (over https, or to loopback), never
on a redirect to another host, and is never printed.

Exit status: 0 done; 1 refused or failed for good; 75 a transient failure (the part file
is kept, running again resumes).
"""

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

CHUNK = 1 << 20
TEMPFAIL = 75
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Fail(Exception):
    def __init__(self, code, message, retry=False):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.retry = retry


def host_of(url):
    return (urllib.parse.urlsplit(url).hostname or "").lower()


def may_authorize(url, auth_hosts):
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if not any(host == h or host.endswith("." + h) for h in auth_hosts):
        return False
    return parts.scheme == "https" or host in LOOPBACK


class Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects; the token goes along only to another allowed hub host."""

    def __init__(self, authorization, auth_hosts):
        self.authorization = authorization
        self.auth_hosts = auth_hosts

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = urllib.request.HTTPRedirectHandler.redirect_request(self, req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        new.remove_header("Authorization")
        if self.authorization and may_authorize(new.full_url, self.auth_hosts):
            new.add_unredirected_header("Authorization", self.authorization)
        return new


def content_range_total(value):
    # "bytes 100-199/1000" or "bytes */1000"
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def sha256_of(path, hasher=None):
    hasher = hasher or hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                return hasher
            hasher.update(block)


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fetch_once(opener, url, part, opts, want_sha, state):
    """One HTTP request: continue the part file from its current size."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    req = urllib.request.Request(url, headers={"User-Agent": opts.get("user_agent") or "socialsync-fetch"})
    authorization = opts.get("authorization")
    if authorization and may_authorize(url, opts.get("auth_hosts") or []):
        req.add_unredirected_header("Authorization", authorization)
    if offset:
        req.add_header("Range", "bytes=%d-" % offset)
    stall = float(opts.get("stall_timeout") or 60)
    try:
        resp = opener.open(req, timeout=stall)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = content_range_total(exc.headers.get("Content-Range"))
            exc.close()
            if total is not None and total == offset:
                state["total"] = total
                return  # the part file is already complete
            os.truncate(part, 0)
            state["hasher"] = hashlib.sha256() if want_sha else None
            raise Fail("range", "the server refused to resume; starting over", retry=True) from None
        exc.close()
        if exc.code in (401, 403):
            raise Fail("auth", "HTTP %d from %s: the hub refused access (is the token set and the licence "
                               "accepted?)" % (exc.code, host_of(url))) from None
        if exc.code == 404:
            raise Fail("not_found", "HTTP 404 from %s: no such file" % host_of(url)) from None
        if exc.code == 429 or exc.code >= 500:
            raise Fail("http", "HTTP %d from %s" % (exc.code, host_of(url)), retry=True) from None
        raise Fail("http", "HTTP %d from %s" % (exc.code, host_of(url))) from None
    except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Fail("network", "cannot reach %s: %s" % (host_of(url), reason), retry=True) from None

    with resp:
        status = resp.status
        if status == 206 and offset:
            start = 0
            crange = resp.headers.get("Content-Range") or ""
            if crange.startswith("bytes ") and "-" in crange:
                start = int(crange[6:].split("-", 1)[0] or 0)
            if start != offset:
                raise Fail("range", "the server resumed at %d, not %d" % (start, offset), retry=True)
            total = content_range_total(crange)
            mode = "ab"
            state["resumed"] = True
        else:
            if offset:
                state["hasher"] = hashlib.sha256() if want_sha else None
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        state["total"] = total
        if total is not None:
            free = shutil.disk_usage(os.path.dirname(part)).free
            if total - offset > free:
                raise Fail("no_space", "needs %d bytes, %d free on the server" % (total - offset, free))
        emit("start", offset=offset, total=total, resumed=bool(offset))
        done = offset
        interval = float(opts.get("progress_interval") or 0.5)
        last_at, last_bytes = time.monotonic(), done
        rate = None
        read = getattr(resp, "read1", None) or resp.read  # read1: what has arrived, so progress flows
        with open(part, mode) as out:
            while True:
                try:
                    block = read(CHUNK)
                except (socket.timeout, ConnectionError, OSError) as exc:
                    out.flush()
                    raise Fail("network", "connection to %s broke at %d bytes: %s" % (host_of(url), done, exc),
                               retry=True) from None
                if not block:
                    break
                out.write(block)
                if state.get("hasher") is not None:
                    state["hasher"].update(block)
                done += len(block)
                now = time.monotonic()
                if now - last_at >= interval:
                    current = (done - last_bytes) / (now - last_at)
                    rate = current if rate is None else 0.5 * rate + 0.5 * current
                    emit("progress", bytes=done, total=total, rate=round(rate, 1))
                    last_at, last_bytes = now, done
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done < total:
            raise Fail("network", "the connection closed at %d of %d bytes" % (done, total), retry=True)
        state["total"] = done if total is None else total
        emit("progress", bytes=done, total=state["total"], rate=round(rate, 1) if rate else None)


def main():
    if len(sys.argv) != 4:
        raise Fail("bad_args", "usage: DEST_DIR FILENAME SHA256|- (the URL and options on stdin)")
    dest, filename, want = sys.argv[1:4]
    want = None if want == "-" else want.lower()
    if "/" in filename or filename.startswith(".") or ".." in filename:
        raise Fail("bad_args", "bad file name")
    opts = json.loads(sys.stdin.readline() or "{}")
    url = opts.get("url")
    if not isinstance(url, str) or not url:
        raise Fail("bad_args", "no URL on stdin")
    os.makedirs(dest, exist_ok=True)
    final = os.path.join(dest, filename)
    part = os.path.join(dest, "." + filename + ".part")

    lock = open(os.path.join(dest, "." + filename + ".lock"), "w")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()  # not ours: leave the file to the process that holds it
        raise Fail("busy", "another download of %s is running on this server" % filename) from None

    try:
        if os.path.exists(final):
            size = os.path.getsize(final)
            if want is not None:
                actual = sha256_of(final).hexdigest()
                if actual != want:
                    raise Fail("exists", "%s already exists with a different sha256 (%s); remove it first"
                               % (filename, actual))
            emit("done", bytes=size, total=size, sha256=want, existing=True)
            return 0

        state = {"hasher": None, "total": None}
        if want is not None:
            state["hasher"] = sha256_of(part) if os.path.exists(part) else hashlib.sha256()
        opener = urllib.request.build_opener(Redirects(opts.get("authorization"), opts.get("auth_hosts") or []))
        attempts = int(opts.get("attempts") or 3)
        for attempt in range(1, attempts + 1):
            try:
                fetch_once(opener, url, part, opts, want is not None, state)
                break
            except Fail as exc:
                if not exc.retry or attempt == attempts:
                    raise
                emit("retry", attempt=attempt, message=exc.message)
                time.sleep(min(10.0, 0.5 * 2 ** (attempt - 1)))

        size = os.path.getsize(part)
        actual = None
        if want is not None:
            actual = state["hasher"].hexdigest()
            if actual != want:
                os.unlink(part)
                raise Fail("hash_mismatch", "sha256 mismatch: expected %s, got %s; the file was deleted"
                           % (want, actual))
        os.replace(part, final)
        fsync_dir(dest)
        emit("done", bytes=size, total=size, sha256=actual, existing=False)
        return 0
    finally:
        try:
            os.unlink(lock.name)
        except OSError:
            pass
        lock.close()


def run():
    try:
        return main()
    except Fail as exc:
        emit("error", code=exc.code, message=exc.message, retry=exc.retry)
        return TEMPFAIL if exc.retry else 1
    except OSError as exc:
        transient = exc.errno not in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT)
        emit("error", code="os", message="%s: %s" % (type(exc).__name__, exc), retry=transient)
        return TEMPFAIL if transient else 1
    except Exception as exc:  # report; never a traceback with the opts in scope
        emit("error", code="internal", message="%s: %s" % (type(exc).__name__, exc), retry=False)
        return 1


if __name__ == "__main__":
    sys.exit(run())
