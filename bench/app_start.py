#!/usr/bin/env python3
"""Start-up time and memory of the Streamlit app.

Starts ``python -m streamlit run app.py --server.headless true --server.port <free port>``
(bound to 127.0.0.1, usage statistics off, ``TRIAGE_DATA_DIR`` in a temporary folder, so an
empty worklist) and measures from the moment the process is started:

  health     until GET /_stcore/health answers 200
  HTML       until GET / serves the page's HTML
  rendered   until a headless Chromium shows the Worklist page's title (the page script has run)

then, still in the browser, uploads one real BRISC slice on the New scans page and clicks
"Analyse", which loads the models: the time of that first analysis and the resident memory of
the server's process tree (VmRSS summed over the server and its children; VmHWM of the server)
before and after the models are loaded. The browser part needs selenium and
/usr/bin/chromium + /usr/bin/chromedriver; without them only health/HTML/idle RSS are reported
(``--no-browser`` forces that). The server is killed at the end of every repeat.

Example: python bench/app_start.py --repeats 3 --write
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

TARGET_READY_S = 5.0
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--window-size=1400,1000",
    # Nothing but this machine is ever contacted.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="server starts measured (default 3; medians reported)")
    p.add_argument("--timeout", type=float, default=180, help="seconds allowed for each wait (default 180)")
    p.add_argument("--no-browser", action="store_true", help="skip the Chromium part (render, model load)")
    C.add_common_args(p)
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_until(pred, timeout: float, what: str, poll: float = 0.02, alive=None):
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        v = pred()
        if v:
            return v
        if alive is not None and not alive():
            raise RuntimeError(f"the server exited while waiting for {what}")
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def browser_available() -> str | None:
    """None when the browser part can run, else the reason it cannot."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.access(exe, os.X_OK):
            return f"{exe} is missing"
    return None


def start_browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group this script created for the server."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def one_start(args: argparse.Namespace, tmp: Path, upload: Path, driver) -> dict:
    from selenium.webdriver.common.by import By

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="data-"))
    env = {
        **os.environ,
        "TRIAGE_DATA_DIR": str(data_dir),
        "TRIAGE_TORCH_THREADS": str(args.threads),
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
    ]
    log = (tmp / f"server-{port}.log").open("wb")
    r: dict = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=C.REPO_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive() -> bool:
        return proc.poll() is None

    try:
        wait_until(lambda: http_get(base + "/_stcore/health")[0] == 200, args.timeout, "/_stcore/health", alive=alive)
        r["health_s"] = time.perf_counter() - t0

        def html_served() -> bool:
            status, body = http_get(base + "/")
            return status == 200 and b"<html" in body.lower()

        wait_until(html_served, args.timeout, "the HTML of /", alive=alive)
        r["html_s"] = time.perf_counter() - t0
        r["rss_started_mib"] = C.tree_kib(proc.pid) / 1024
        if driver is None:
            return r
        t_get = time.perf_counter()
        driver.get(base + "/")
        wait_until(
            lambda: driver.find_elements(By.XPATH, "//h1[contains(normalize-space(.), 'Worklist')]"),
            args.timeout,
            "the Worklist page to render",
            poll=0.05,
            alive=alive,
        )
        now = time.perf_counter()
        r["rendered_s"], r["render_from_get_s"] = now - t0, now - t_get
        time.sleep(1.0)  # let the first script run finish
        r["rss_idle_mib"] = C.tree_kib(proc.pid) / 1024

        # First analysis: upload one slice on New scans and press Analyse (loads the models).
        driver.get(base + "/new_scans")
        inputs = wait_until(
            lambda: [
                e
                for e in driver.find_elements(By.CSS_SELECTOR, "input[type=file]")
                if e.get_dom_attribute("webkitdirectory") is None
            ],
            args.timeout,
            "the file uploader of New scans",
            poll=0.05,
            alive=alive,
        )
        inputs[0].send_keys(str(upload))
        button = wait_until(
            lambda: [
                b
                for b in driver.find_elements(By.XPATH, "//button[contains(normalize-space(.), 'Analyse 1 file')]")
                if b.is_enabled()
            ],
            args.timeout,
            "the 'Analyse 1 file' button",
            poll=0.05,
            alive=alive,
        )[0]
        t_click = time.perf_counter()
        button.click()
        wait_until(
            lambda: driver.find_elements(By.XPATH, "//*[contains(normalize-space(.), 'Last batch')]"),
            args.timeout,
            "the analysis result ('Last batch')",
            poll=0.05,
            alive=alive,
        )
        r["first_analysis_s"] = time.perf_counter() - t_click
        time.sleep(1.0)
        r["rss_models_mib"] = C.tree_kib(proc.pid) / 1024
        r["hwm_mib"] = C.proc_status_kib(proc.pid, "VmHWM") / 1024
        text = driver.find_element(By.TAG_NAME, "body").text
        r["added"] = "1 added to the worklist" in text
        return r
    finally:
        stop_server(proc)
        log.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, versions = C.start(args)
    os.environ["TRIAGE_WEIGHTS_DIR"] = str(Path(settings.weights_dir).resolve())
    slices = C.select_slices(C.load_brisc(C.brisc_dir(args.data)), 1, args.seed, size=(512, 512))
    if not slices:
        C.die("no slice found in the manifest", C.EXIT_NO_DATA)
    reason = "--no-browser" if args.no_browser else browser_available()
    tmp = Path(tempfile.mkdtemp(prefix="triage-bench-app-"))
    runs = []
    driver = None
    try:
        for i in range(args.repeats):
            if reason is None:
                driver = start_browser(tmp / f"profile-{i}")  # started before the server: not timed
            try:
                runs.append(one_start(args, tmp, slices[0].path.resolve(), driver))
            finally:
                if driver is not None:
                    driver.quit()
                    driver = None
            print(
                f"  start {i + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in runs[-1].items() if isinstance(v, float)),
                file=sys.stderr,
            )
    except (TimeoutError, RuntimeError) as exc:
        logs = sorted(tmp.glob("server-*.log"))
        tail = logs[-1].read_text(errors="replace")[-2000:] if logs else ""
        C.die(f"{exc}\n--- server log (tail) ---\n{tail}", C.EXIT_FAILED)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def col(key: str, digits: int = 2) -> tuple[str, str]:
        vals = [r[key] for r in runs if key in r]
        if not vals:
            return "-", "-"
        return C.fmt(C.median(vals), digits), ", ".join(C.fmt(v, digits) for v in vals)

    rows = [
        ("health: /_stcore/health answers", "s", *col("health_s")),
        ("first page HTML served (GET /)", "s", *col("html_s")),
        ("Worklist page rendered in Chromium (from process start)", "s", *col("rendered_s")),
        ("  of which: browser navigation to rendered", "s", *col("render_from_get_s")),
        ("first analysis on New scans (1 slice, loads the models)", "s", *col("first_analysis_s")),
        ("server RSS after start (no session yet)", "MiB", *col("rss_started_mib", 0)),
        ("server RSS after the Worklist page (models not loaded)", "MiB", *col("rss_idle_mib", 0)),
        ("server RSS after the models are loaded", "MiB", *col("rss_models_mib", 0)),
        ("server peak RSS (VmHWM)", "MiB", *col("hwm_mib", 0)),
    ]
    ready_key = "rendered_s" if any("rendered_s" in r for r in runs) else "html_s"
    ready = C.median([r[ready_key] for r in runs])
    note = (
        ""
        if reason is None
        else f"Browser part skipped ({reason}): no rendered time, no model-load figures; the target is "
        f"checked on the HTML time. "
    )
    if reason is None and not all(r.get("added") for r in runs):
        note += "Warning: the uploaded slice was not reported as added to the worklist in every start. "
    out = [
        C.header("Streamlit app start", C.command_line(), args.threads, versions),
        "",
        (
            f"{args.repeats} start(s) of `streamlit run app.py` (headless, 127.0.0.1, empty data folder); "
            f"times from process start. Memory is the server's process tree. {note}"
        ),
        "",
        C.table(["measurement", "unit", "median", "each start"], rows),
        "",
        C.table(
            ["target", "measured", "verdict"],
            [
                (
                    (
                        f"app ready <= {TARGET_READY_S:.0f} s from start to first page "
                        f"({'rendered' if ready_key == 'rendered_s' else 'HTML'})"
                    ),
                    f"{C.fmt(ready, 2)} s",
                    C.verdict(ready <= TARGET_READY_S),
                )
            ],
        ),
    ]
    return C.finish(args, "app_start", out, versions)


if __name__ == "__main__":
    raise SystemExit(main())
