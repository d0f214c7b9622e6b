"""Start and stop the PACS services (``python -m triage listen`` / ``poll``) from the app (no streamlit).

The service runs as its own background process (its own session, so a Streamlit rerun, a closed
tab or a restarted app leaves it running), writes its output to ``<data dir>/pacs/<kind>.log`` and is
recorded in ``<data dir>/pacs/<kind>.pid`` (pid, start time, command). Liveness is psutil's: the
recorded pid must be alive, not a zombie, and have the recorded start time (a later process that
reused the pid is not ours). Start and stop hold an exclusive lock on ``<kind>.lock``, so two tabs
(or two app processes) clicking "Start" at once start one service; the second is told it runs.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from triage import atomic
from triage.config import Settings
from triage.errors import TriageError

log = logging.getLogger(__name__)

KINDS = ("listen", "poll")
REPO_DIR = Path(__file__).resolve().parents[1]
# A service that exits this soon after its start failed to start (bad port, address in use...).
START_CHECK_S = 1.5
STOP_TIMEOUT_S = 20.0
# The Popen objects of services started by this process (kept so they are not garbage-collected while
# running, which would warn, and so their exit is collected).
_PROCS: dict[int, subprocess.Popen] = {}


class ServiceError(TriageError):
    """A service could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class ServiceState:
    """What the app knows of one service: running or not, its pid, command and recent output."""

    kind: str
    running: bool
    pid: int | None = None
    started_at: float | None = None
    command: tuple[str, ...] = ()
    log_tail: tuple[str, ...] = field(default_factory=tuple)


def _folder(settings: Settings) -> Path:
    return Path(settings.data_dir) / "pacs"


def pid_file(settings: Settings, kind: str) -> Path:
    return _folder(settings) / f"{kind}.pid"


def log_file(settings: Settings, kind: str) -> Path:
    return _folder(settings) / f"{kind}.log"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ServiceError(f"unknown PACS service {kind!r} (expected one of {', '.join(KINDS)})")


@contextmanager
def _locked(settings: Settings, kind: str) -> Iterator[None]:
    """An exclusive lock on ``<kind>.lock`` (released by the OS if the holder dies)."""
    folder = _folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{kind}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_record(settings: Settings, kind: str) -> dict | None:
    try:
        record = json.loads(pid_file(settings, kind).read_text(encoding="utf-8"))
        return record if isinstance(record, dict) and int(record.get("pid", 0)) > 0 else None
    except (OSError, ValueError, TypeError):
        return None  # no file, or a half-written / hand-edited one: treated as not running


def _process(record: dict | None):
    """The psutil process of a record when it is still that process, else None."""
    import psutil

    if record is None:
        return None
    try:
        proc = psutil.Process(int(record["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(proc.pid)
            return None
        if abs(proc.create_time() - float(record.get("create_time", 0))) > 2.0:
            return None  # the pid was reused by another process
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _reap(pid: int) -> None:
    """Collect the exit status of a service this process started, so it leaves no zombie."""
    popen = _PROCS.pop(pid, None)
    if popen is not None:
        popen.poll()
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: Path, lines: int = 8) -> tuple[str, ...]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ()
    return tuple(text.splitlines()[-lines:])


def service_state(settings: Settings, kind: str) -> ServiceState:
    """Whether the ``listen`` / ``poll`` service of this data folder runs (psutil), and its output."""
    _check_kind(kind)
    record = _read_record(settings, kind)
    proc = _process(record)
    tail = _tail(log_file(settings, kind))
    if proc is None:
        return ServiceState(kind, False, log_tail=tail)
    return ServiceState(
        kind,
        True,
        pid=proc.pid,
        started_at=float(record.get("started_at") or 0) or None,
        command=tuple(record.get("command") or ()),
        log_tail=tail,
    )


def listen_args(
    ae_title: str = "TRIAGE",
    port: int = 11112,
    host: str = "127.0.0.1",
    allow: Sequence[str] = (),
    send: str = "",
) -> list[str]:
    """The ``listen`` command line options for these settings."""
    args = ["--ae-title", ae_title, "--port", str(int(port)), "--host", host]
    if allow:
        args += ["--allow", *allow]
    if send:
        args += ["--send", send]
    return args


def poll_args(
    url: str, interval_s: float = 30.0, send: str = "", ae_title: str = "TRIAGE", lookback_days: int | None = None
) -> list[str]:
    """The ``poll`` command line options for these settings."""
    args = ["--url", url, "--interval", f"{float(interval_s):g}", "--ae-title", ae_title]
    if lookback_days is not None:
        args += ["--lookback-days", str(int(lookback_days))]
    if send:
        args += ["--send", send]
    return args


def _validate(kind: str, args: Sequence[str]) -> None:
    """Check the options as the command would (argparse, AE title, port, --send target)."""
    import argparse
    import contextlib
    import io

    from triage.cli import build_parser
    from triage.pacs_net import parse_sender

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = build_parser().parse_args([kind, *args])
    except SystemExit:
        msg = err.getvalue().strip().splitlines()
        raise ServiceError(f"invalid {kind} options: {msg[-1] if msg else ' '.join(args)}") from None
    assert isinstance(ns, argparse.Namespace)
    if not ns.ae_title or len(ns.ae_title) > 16:
        raise ServiceError(f"AE title must be 1-16 characters, got {ns.ae_title!r}")
    if kind == "listen":
        if not 0 < ns.port < 65536:
            raise ServiceError(f"port must be 1-65535, got {ns.port}")
        for ae in ns.allow or ():
            if len(ae) > 16:
                raise ServiceError(f"allowed AE title {ae!r} is longer than 16 characters")
    elif not str(ns.url).startswith(("http://", "https://")):
        raise ServiceError(f"the DICOMweb URL must start with http:// or https://, got {ns.url!r}")
    elif ns.interval <= 0:
        raise ServiceError(f"the poll interval must be positive, got {ns.interval:g}")
    try:
        parse_sender(ns.send, ns.ae_title)
    except TriageError as exc:
        raise ServiceError(str(exc)) from exc


def start_service(settings: Settings, kind: str, args: Sequence[str]) -> ServiceState:
    """Start ``python -m triage <kind> <args>`` in the background for this data folder.

    Raises ServiceError when it already runs (here or started from another tab), when the options
    are invalid, or when the process exits at once (its output says why, e.g. port in use)."""
    import psutil

    _check_kind(kind)
    _validate(kind, args)
    with _locked(settings, kind):
        running = service_state(settings, kind)
        if running.running:
            raise ServiceError(f"the {kind} service already runs (pid {running.pid}); stop it first")
        cmd = [sys.executable, "-m", "triage", kind, *args, "--data-dir", str(settings.data_dir)]
        env = {
            **os.environ,
            "TRIAGE_DATA_DIR": str(settings.data_dir),
            "TRIAGE_WEIGHTS_DIR": str(settings.weights_dir),
            "PYTHONPATH": os.pathsep.join([str(REPO_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PYTHONUNBUFFERED": "1",
        }
        logf = log_file(settings, kind)
        with open(logf, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd[1:])}\n".encode())
            out.flush()
            # Its own session: not stopped with the Streamlit script, a page rerun or a closed tab.
            proc = subprocess.Popen(
                cmd,
                cwd=REPO_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _PROCS[proc.pid] = proc
        record = {
            "pid": proc.pid,
            "create_time": psutil.Process(proc.pid).create_time(),
            "started_at": time.time(),
            "command": cmd[1:],
        }
        atomic.write_json(pid_file(settings, kind), record)
        try:
            code = proc.wait(START_CHECK_S)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            pid_file(settings, kind).unlink(missing_ok=True)
            tail = _tail(logf, 4)
            raise ServiceError(f"the {kind} service exited at once (code {code}): " + (" | ".join(tail) or "no output"))
    log.info("pacs: started %s service, pid %d", kind, proc.pid)
    return service_state(settings, kind)


def stop_service(settings: Settings, kind: str, timeout_s: float = STOP_TIMEOUT_S) -> ServiceState:
    """Stop the service (SIGTERM: it finishes its pass and exits; killed after ``timeout_s``)."""
    import psutil

    _check_kind(kind)
    with _locked(settings, kind):
        proc = _process(_read_record(settings, kind))
        if proc is not None:
            try:
                proc.terminate()
                try:
                    proc.wait(timeout_s)
                except psutil.TimeoutExpired:
                    log.warning("pacs: %s service pid %d did not stop in %.0f s; killed", kind, proc.pid, timeout_s)
                    proc.kill()
                    proc.wait(10)
            except psutil.NoSuchProcess:
                pass
            _reap(proc.pid)
        pid_file(settings, kind).unlink(missing_ok=True)
    return service_state(settings, kind)
