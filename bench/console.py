"""Operator console under a fleet: its RSS and CPU, the fleet page's time to
first paint, and the update lag from a sample's publication to the screen.

Starts a mosquitto, a gateway, ``continuum-console`` and ``firmware-sim`` with
``--devices`` boards streaming (one sample per board per second by default),
then drives the fleet page in headless Debian chromium (Playwright):

* **first paint**: from navigation to the first rows of the fleet table (and
  the browser's first-contentful-paint), once the whole fleet is known;
* **update lag**: a probe device publishes a sample with a new ``cpu`` value
  every second; a MutationObserver in the page notes when its cell shows it.
  Lag = that moment - the publication (same machine, same clock). Goal: <= 2 s;
* **console RSS and CPU** over the streaming window (from /proc).

    python -m bench.console             # 10,000 devices, 60 s
    python -m bench.console --quick     # 1,000 devices, 20 s

The table goes to stdout, the figures to reports/bench-console.json.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
from continuum_dev.testing import free_port, launch_chromium, rss_mb, wait_for

from ._common import deployment, format_table, log, machine, options, parser, write_json

TICK = os.sysconf("SC_CLK_TCK")
PROBE = "lag-probe"
OBSERVE = """(dev) => {
  window.__seen = {};
  const obs = new MutationObserver(() => {
    const cell = document.querySelector('tr[data-dev="' + dev + '"] td.cpu');
    if (cell && !(cell.textContent in window.__seen))
      window.__seen[cell.textContent] = performance.timeOrigin + performance.now();
  });
  obs.observe(document.querySelector('#fleet tbody'), {childList: true, subtree: true, characterData: true});
}"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def run(args: Any) -> dict[str, Any]:
    from continuum_console._auth import hash_password
    from playwright.sync_api import sync_playwright

    rate = args.rate or args.devices  # one sample per board per second
    with deployment(root=f"bench-{os.getpid()}/continuum/v1") as dep:
        dep.start_gateway()
        accounts = Path(dep.tmp) / "accounts.toml"
        pw = hash_password("bench-pass", n=1 << 10)
        accounts.write_text(f'[operators.bench]\nrole = "readonly"\npassword = "{pw}"\n')
        port = free_port()
        console = dep.python(
            "console", "-m", "continuum_console", "--broker", dep.url, "--root", dep.root,
            "--accounts", str(accounts), "--port", str(port),
            "--audit-log", str(Path(dep.tmp) / "audit.jsonl"),
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(base + "/healthz"), 30, 0.2, "console up")
        log(f"console pid {console.pid}; firmware-sim: {args.devices} devices at {rate}/s")
        dep.start_firmware_sim(
            "--devices", str(args.devices), "--rate", str(rate),
            "--duration", str(args.duration + 120), "--progress-interval", "30",
        )  # fmt: skip
        host, mport = dep.url.rsplit(":", 1)
        probe = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        probe.connect(host.split("//")[-1], int(mport))
        probe.loop_start()
        topic = f"{dep.root}/dev/{PROBE}/metrics"

        def publish(seq: int, cpu: float) -> float:
            body = {"dev": PROBE, "seq": seq, "ts": time.time(), "cpu": cpu, "mem": 1.0}
            t = time.time()
            probe.publish(topic, cbor2.dumps(body), qos=1)
            return t

        publish(1, 0.5)
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(base + "/login")
            page.fill("input[name=username]", "bench")
            page.fill("input[name=password]", "bench-pass")
            page.click("button[type=submit]")
            page.wait_for_url(base + "/")
            want = f"{args.devices + 1} devices"
            t_seen = time.monotonic()
            wait_for(
                lambda: (page.text_content("#summary") or "").startswith(want),
                120,
                0.25,
                "the whole fleet on the page",
            )
            log(f"whole fleet known after {time.monotonic() - t_seen:.1f} s; measuring")
            received = "fetch('/api/fleet?limit=1').then(r => r.json()).then(j => j.received)"
            t0_cpu, t0, n0 = cpu_seconds(console.pid), time.monotonic(), page.evaluate(received)
            paints = []
            for _ in range(3):
                t = time.monotonic()
                page.goto(base + "/")
                page.wait_for_selector("#fleet tbody tr")
                rows_ms = (time.monotonic() - t) * 1000
                fcp = page.evaluate(
                    "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime"
                )
                paints.append((rows_ms, fcp))
            page.fill("#q", PROBE)
            wait_for(lambda: page.locator("#fleet tbody tr").count() == 1, 30, 0.1, "search")
            page.evaluate(OBSERVE, PROBE)
            sent: dict[str, float] = {}
            peak_rss, seq = 0.0, 1
            while time.monotonic() - t0 < args.duration:
                seq += 1
                cpu = round(seq + 0.1, 1)
                sent[f"{cpu:.1f}"] = publish(seq, cpu)
                peak_rss = max(peak_rss, rss_mb(console.pid)[0])
                time.sleep(1.0)
            time.sleep(3.0)  # the last samples' way to the screen
            seen = page.evaluate("window.__seen")
            wall = time.monotonic() - t0
            taken = (page.evaluate(received) - n0) / wall
            cpu_pct = 100 * (cpu_seconds(console.pid) - t0_cpu) / wall
            rss_end, hwm = rss_mb(console.pid)
            browser.close()
        probe.loop_stop()
        probe.disconnect()
        alive = dep.alive("console")

    lags = sorted(seen[k] / 1000 - sent[k] for k in sent if k in seen)
    missed = len(sent) - len(lags)
    row = {
        "devices": args.devices,
        "rate": rate,
        "taken": round(taken),
        "rss_mb": round(rss_end, 1),
        "peak_rss_mb": round(max(hwm, peak_rss), 1),
        "cpu_pct": round(cpu_pct, 1),
        "first_rows_ms": round(statistics.median(p[0] for p in paints)),
        "fcp_ms": round(statistics.median(p[1] or 0 for p in paints)),
        "lag_p50_s": round(statistics.median(lags), 2) if lags else None,
        "lag_max_s": round(lags[-1], 2) if lags else None,
        "missed": missed,
    }
    ok = alive and bool(lags) and lags[-1] <= 2.0 and missed == 0
    return {"table": [row], "goal_met": ok, "lags_s": [round(x, 3) for x in lags]}


def main(argv: list[str] | None = None) -> int:
    p = parser("console", __doc__.split("\n\n")[0], quick="1,000 devices for 20 s")
    options(
        p,
        """
devices   10000  simulated boards
rate      0      samples/s of the whole fleet (0: one per board per second)
duration  60.0   seconds of measuring
""",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.devices, args.duration = 1000, 20.0
    result = run(args)
    print(
        format_table(
            result["table"],
            "devices> | rate:samples/s> | taken:console took/s> | peak_rss_mb:console peak RSS MB> | "
            "cpu_pct:console CPU %> | first_rows_ms:fleet first rows ms> | fcp_ms:FCP ms> | "
            "lag_p50_s:lag p50 s> | lag_max_s:lag max s> | missed>",
        )
    )
    print(f"\nupdate lag goal <= 2 s: {'met' if result['goal_met'] else 'NOT met'}")
    write_json(args.json, {"machine": machine(args), **result})
    return 0 if result["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
