"""Talking to the PACS: a C-STORE receiver (pynetdicom), a DICOMweb poller (dicomweb-client), senders.

These are the only parts of the workstation that open network connections, and only to the
PACS the command line names. The loops (:func:`run_listener`, :func:`run_poller`) run outside the
Streamlit script, as ``python -m triage listen`` / ``python -m triage poll``.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

from triage.config import Settings
from triage.errors import TriageError
from triage.pacs import PacsQueue, flush_outbox, process_pending, receive_bytes, receive_file

log = logging.getLogger(__name__)

# DICOM JSON tags used from QIDO-RS answers.
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
N_STUDY_INSTANCES = "00201208"
QIDO_PAGE = 100
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
# The receiver binds this address unless told otherwise: reachable from this machine only. Listening
# on the hospital network (`--host 0.0.0.0`) is an explicit choice, together with the AE allow-list.
DEFAULT_HOST = "127.0.0.1"
# A series is analysed once no instance of it arrived for this long (a sender is still sending it).
SETTLE_S = 2.0


def _json_value(item: dict, tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


# -- senders ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CStoreSender:
    """Stores result objects into a DICOM node by C-STORE (one association per object)."""

    host: str
    port: int
    called_ae: str
    calling_ae: str = "TRIAGE"
    timeout_s: float = 10.0

    def store(self, data: bytes) -> None:
        """Send one encoded DICOM object; raises TriageError when it is not stored."""
        import pydicom
        from pynetdicom import AE

        ds = pydicom.dcmread(io.BytesIO(data))
        ae = AE(self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            raise TriageError(f"cannot associate with {self.called_ae}@{self.host}:{self.port}")
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        code = getattr(status, "Status", None)
        # 0x0000 success, 0xB000/0xB007/0xB006 warnings (stored, coerced): all mean stored.
        if code is None or not (code == 0 or 0xB000 <= code <= 0xB0FF):
            raise TriageError(f"C-STORE to {self.called_ae} refused (status {code!r})")

    def describe(self) -> str:
        return f"C-STORE {self.called_ae}@{self.host}:{self.port}"


@dataclass(frozen=True)
class StowSender:
    """Stores result objects by STOW-RS into a DICOMweb service."""

    url: str

    def store(self, data: bytes) -> None:
        """Send one encoded DICOM object; raises when the service does not store it."""
        import pydicom

        _dicomweb(self.url, 30.0).store_instances([pydicom.dcmread(io.BytesIO(data))])

    def describe(self) -> str:
        return f"STOW-RS {self.url}"


def parse_sender(target: str | None, calling_ae: str = "TRIAGE") -> CStoreSender | StowSender | None:
    """``dicom://AE@host:port`` (C-STORE) or an ``http(s)://`` DICOMweb root (STOW-RS), or None."""
    if not target:
        return None
    u = urlparse(target)
    if u.scheme == "dicom":
        if not (u.username and u.hostname and u.port):
            raise TriageError(f"--send {target!r}: expected dicom://AE_TITLE@host:port")
        return CStoreSender(u.hostname, u.port, u.username, calling_ae)
    if u.scheme in ("http", "https") and u.hostname:
        return StowSender(target)
    raise TriageError(f"--send {target!r}: expected dicom://AE_TITLE@host:port or an http(s):// DICOMweb URL")


# -- C-STORE receiver ------------------------------------------------------------------
class Receiver:
    """A storage SCP: every instance received is written and queued before "success" is answered.

    pynetdicom writes each incoming dataset to a temporary file as its fragments arrive
    (``STORE_RECV_CHUNKED_DATASET``, the documented way to bound memory); the handler moves that file
    into the incoming folder (:func:`triage.pacs.receive_file`), so an instance is never held whole
    in memory, whatever its size."""

    def __init__(
        self,
        queue: PacsQueue,
        settings: Settings,
        ae_title: str,
        port: int,
        host: str = DEFAULT_HOST,
        allow: tuple[str, ...] = (),
    ):
        if not ae_title or len(ae_title) > 16:
            raise ValueError(f"AE title must be 1-16 characters, got {ae_title!r}")
        if not 0 < int(port) < 65536:
            raise ValueError(f"port must be 1-65535, got {port}")
        self.queue, self.settings = queue, settings
        self.ae_title, self.port, self.host, self.allow = ae_title, int(port), host, tuple(allow)
        self._server = None

    def _on_store(self, event) -> int:
        calling = str(getattr(event.assoc.requestor, "ae_title", "") or "").strip()
        try:
            receive_file(self.queue, self.settings, event.dataset_path, f"listen:{calling}")
        except Exception as exc:  # answer "out of resources": the sender keeps it and retries
            self.queue.event("listen", "error", f"instance from {calling} not stored: {exc}")
            return OUT_OF_RESOURCES
        self.queue.set_state("listen", "listening", f"{self.describe()}; last instance from {calling}")
        return SUCCESS

    def describe(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def start(self) -> None:
        """Start serving in background threads (returns at once)."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
        from pynetdicom.sop_class import Verification

        # Stream each received dataset to a temporary file instead of decoding it in memory.
        _config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(self.ae_title)
        if self.allow:
            # Associations from other calling AE titles are rejected by pynetdicom itself.
            ae.require_calling_aet = list(self.allow)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.queue.set_state("listen", "listening", self.describe())
        self.queue.event("listen", "info", f"listening as {self.describe()}, allowed: {', '.join(self.allow) or 'any'}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            self.queue.set_state("listen", "stopped", self.describe())


# -- DICOMweb poller -------------------------------------------------------------------
@dataclass(frozen=True)
class PollResult:
    """One poll: studies listed, instances newly queued, studies skipped as unchanged."""

    studies: int
    queued: int
    unchanged: int


class Poller:
    """QIDO-RS for studies new or grown since the last poll, WADO-RS for their new instances.

    The cursor is per URL: each study's instance count at the last complete look (a study is only
    opened again when it grew), and the time of the last complete poll (with ``lookback_days``,
    studies whose StudyDate is older than that time minus the lookback are not listed at all, for a
    large PACS). A poll cut short (PACS down) keeps what it queued and opens the rest next time.
    """

    def __init__(
        self,
        queue: PacsQueue,
        settings: Settings,
        url: str,
        modality: str | None = "MR",
        lookback_days: int | None = None,
        timeout_s: float = 20.0,
    ):
        self.queue, self.settings, self.url = queue, settings, url.rstrip("/")
        self.modality, self.lookback_days, self.timeout_s = modality, lookback_days, timeout_s
        self.source = f"poll:{self.url}"

    def _client(self):
        return _dicomweb(self.url, self.timeout_s)

    def _filters(self) -> dict:
        filters = {}
        if self.modality:
            filters["ModalitiesInStudy"] = self.modality
        last = self.queue.get_cursor(self.source)
        if self.lookback_days is not None and last:
            since = datetime.fromisoformat(last) - timedelta(days=self.lookback_days)
            filters["StudyDate"] = f"{since:%Y%m%d}-"
        return filters

    def poll_once(self) -> PollResult:
        """One pass; raises on a network / PACS error (after keeping what was already queued)."""
        import pydicom

        started = datetime.now(UTC)
        client = self._client()
        studies, offset = [], 0
        while True:
            page = client.search_for_studies(
                search_filters=self._filters(), fields=["NumberOfStudyRelatedInstances"], limit=QIDO_PAGE, offset=offset
            )
            studies += page
            if len(page) < QIDO_PAGE:
                break
            offset += len(page)
        queued = unchanged = 0
        for st in studies:
            study = _json_value(st, STUDY_UID)
            count = int(_json_value(st, N_STUDY_INSTANCES) or -1)
            if not study or (count >= 0 and self.queue.seen_count(self.source, study) == count):
                unchanged += 1
                continue
            for inst in client.search_for_instances(study_instance_uid=study):
                sop, series = _json_value(inst, SOP_UID), _json_value(inst, SERIES_UID)
                if not sop or self.queue.known(sop):
                    continue
                ds = client.retrieve_instance(study, series, sop)
                buf = io.BytesIO()
                pydicom.dcmwrite(buf, ds, enforce_file_format=True)
                added, _ = receive_bytes(self.queue, self.settings, buf.getvalue(), self.source)
                queued += int(added)
            self.queue.set_seen(self.source, study, count)  # only once every instance of it is queued
        self.queue.set_cursor(self.source, started.isoformat())
        return PollResult(len(studies), queued, unchanged)


def _dicomweb(url: str, timeout_s: float):
    """A DICOMweb client with a request timeout and without its own retries: it would retry a
    refused connection for ~30 s (5 attempts, exponential); our loops retry on their own schedule."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url)
    client.set_http_retry_params(retry=False)
    client._session.request = _with_timeout(client._session.request, timeout_s)  # no hung poll
    return client


def _with_timeout(request, timeout_s: float):
    def call(*args, **kwargs):
        kwargs.setdefault("timeout", timeout_s)
        return request(*args, **kwargs)

    return call


# -- service loops ---------------------------------------------------------------------
def _work(service, worklist, queue: PacsQueue, sender, settle_s: float = 0.0) -> None:
    process_pending(service, worklist, queue, send=sender is not None, settle_s=settle_s)
    if sender is not None:
        flush_outbox(queue, sender)


def run_listener(
    receiver: Receiver,
    service,
    worklist,
    sender=None,
    stop: threading.Event | None = None,
    tick_s: float = 1.0,
    settle_s: float = SETTLE_S,
) -> None:
    """Serve C-STORE and analyse / send what arrives until ``stop`` is set (or Ctrl-C).

    A series is analysed once none of its instances arrived for ``settle_s`` seconds, so its
    results cover the whole series as sent."""
    stop = stop or threading.Event()
    receiver.start()
    try:
        while not stop.is_set():
            try:
                _work(service, worklist, receiver.queue, sender, settle_s)
            except Exception as exc:  # the service keeps running; the queue keeps the work
                receiver.queue.event("listen", "error", f"work pass failed: {type(exc).__name__}: {exc}")
            stop.wait(tick_s)
    finally:
        receiver.stop()


def run_poller(
    poller: Poller,
    service,
    worklist,
    interval_s: float,
    sender=None,
    stop: threading.Event | None = None,
    once: bool = False,
) -> None:
    """Poll every ``interval_s`` seconds, analyse and send, until ``stop`` is set (``once``: one pass)."""
    stop = stop or threading.Event()
    queue = poller.queue
    while not stop.is_set():
        t = time.monotonic()
        try:
            res = poller.poll_once()
            queue.set_state("poll", "ok", f"{poller.url}: {res.studies} studies, {res.queued} new instances")
        except Exception as exc:  # PACS down or refusing: next poll retries, nothing is lost
            queue.set_state("poll", "down", f"{poller.url}: {type(exc).__name__}: {exc}")
            queue.event("poll", "error", f"poll of {poller.url} failed: {type(exc).__name__}: {exc}")
        try:
            _work(service, worklist, queue, sender)
        except Exception as exc:
            queue.event("poll", "error", f"work pass failed: {type(exc).__name__}: {exc}")
        if once:
            return
        stop.wait(max(0.0, interval_s - (time.monotonic() - t)))
