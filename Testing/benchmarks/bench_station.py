"""Browser station latencies on the standard case with a tumor-holding map, measured in the browser.

Standard case (DESIGN.md section 7): a synthetic phantom, 448 x 448 x 160 voxels, 6 phases,
plus beside its phases the generated worst-case probability map of
``bench_threshold_update.py`` (a 25 mm tumor, twelve enhancing foci spread over the grid,
smooth noise), which the station opens as the case's result (``probability.nii.gz``).

Two stations serve it on 127.0.0.1, one after the other, and headless chromium (Playwright)
times each from the page:

* **before**: the views as trame-slicer sets them up, every slider change applied and
  streamed as it arrives, the page's sliders as trame and Vuetify make them
  (``BREASTTUMORSEG_STATION_PLAIN_VIEWS=1``);
* **after**: the station's slider settings (:mod:`breasttumorseg_station.slider`).

Per station: **slider move -> axial view updated**, from an arrow-key move of the threshold
slider until the axial view's image is replaced (``--moves`` moves, each after the page has
been still for ``--settle-ms``), and until all three views are replaced; **drag**, a burst of
``--burst`` moves 40 ms apart: frames the axial view received, and the time from the last
move until the view showed the final threshold's frame. Optionally (``--segment``) the
Segment click -> overlay on screen with the default model, on the second station.
The page's own share is printed too: from the move until the page sends it on its websocket,
and from the last message it received until the axial frame showed (the rest is the station
and the loopback network). The load average is printed before and after.

    python Testing/benchmarks/bench_station.py [--device cpu|cuda] [--size 448 448 160] [--moves 7]
        [--case FOLDER (phases already written: reused)] [--only before|after] [--segment]
    python Testing/benchmarks/bench_station.py --write-case FOLDER [--size ...]   (phases and map, once)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "BreastTumorSeg"), str(ROOT / "Testing"), str(ROOT / "Testing" / "benchmarks")]

import standard_case  # noqa: E402  (beside this script)

CHROMIUM = "/usr/bin/chromium"
TARGET_MS = 150.0
PLAIN = {"BREASTTUMORSEG_STATION_PLAIN_VIEWS": "1"}
#: JavaScript: record when each view's image is replaced (trame-rca swaps its src per frame).
WATCH_FRAMES = """() => {
  window.__frames = [];
  document.querySelectorAll('img.image-display-area').forEach((img, view) => {
    new MutationObserver(() => window.__frames.push([view, performance.now()]))
      .observe(img, {attributes: true, attributeFilter: ['src']});
  });
  return document.querySelectorAll('img.image-display-area').length;
}"""


#: JavaScript run before the page's own: record when the page's websocket sends and receives.
WATCH_SOCKET = """(() => {
  window.__ws = [];
  const Original = window.WebSocket;
  window.WebSocket = function (...options) {
    const socket = new Original(...options);
    const send = socket.send.bind(socket);
    socket.send = (data) => { window.__ws.push(['send', performance.now()]); return send(data); };
    socket.addEventListener('message', () => window.__ws.push(['receive', performance.now()]));
    return socket;
  };
  window.WebSocket.prototype = Original.prototype;
  Object.assign(window.WebSocket, Original);
})()"""


def write_case(folder: Path, args) -> str:
    """The standard case's phases (generated, or copied from ``--case``) and the generated map;
    returns the grid's size as text."""
    import SimpleITK as sitk

    from bench_threshold_update import generated_map

    folder.mkdir(parents=True, exist_ok=True)
    if args.case and Path(args.case).resolve() == folder.resolve():
        pass  # --write-case FOLDER --case FOLDER: the map beside phases written before
    elif args.case:
        written = Path(args.case) / "probability.nii.gz"
        for path in sorted(Path(args.case).glob("phase_*.nii.gz")) + [Path(args.case) / "times.json"]:
            shutil.copy(path, folder / path.name)
        if written.exists():  # the map --write-case wrote beside the phases
            shutil.copy(written, folder / written.name)
            size = sitk.ReadImage(str(written)).GetSize()
            print(f"case {size} with the generated map copied from {args.case} (not part of the timing)")
            return " x ".join(str(n) for n in size)
    else:
        standard_case.write(folder, args)
    reference = sitk.ReadImage(str(folder / "phase_01.nii.gz"))
    spacing = reference.GetSpacing()
    probability = generated_map(sitk.GetArrayFromImage(reference).shape, spacing, np.random.default_rng(0))
    image = sitk.GetImageFromArray(probability)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(folder / "probability.nii.gz"))
    print(f"case {reference.GetSize()} with the generated map (maximum {probability.max():.2f}, "
          f"{100 * (probability >= 0.5).mean():.2f} % of the grid >= 0.5) written (not part of the timing)")
    return " x ".join(str(n) for n in reference.GetSize())


def time_station(data: Path, args, env: dict, log: Path, segment: bool) -> dict:
    """Open the case with its map on a fresh station and time slider moves (see the module docstring)."""
    from playwright.sync_api import sync_playwright

    from test_station_browser import open_station_page, start_station, stop

    process, port, _ = start_station("--data", str(data), device=args.device, log=log, env=env)
    figures = {"single": [], "all": [], "burst": [], "burst_frames": [], "to_server": [], "shown": []}
    try:
        with sync_playwright() as playwright:
            browser, page = open_station_page(playwright, port, init_script=WATCH_SOCKET, timeout_ms=300000)
            views = page.evaluate(WATCH_FRAMES)
            page.locator("#bts-case").click(force=True)
            page.click(".v-list-item:has-text('standard')")
            started = time.perf_counter()
            page.click("#bts-open-case")
            page.wait_for_selector("#bts-threshold", timeout=600000)
            figures["open"] = time.perf_counter() - started
            page.wait_for_timeout(args.settle_ms)
            slider = page.locator("#bts-threshold [role=slider]")
            slider.focus()
            for index in range(args.moves):
                page.wait_for_timeout(args.settle_ms)
                moved = page.evaluate("performance.now()")
                page.keyboard.press("ArrowRight" if index % 2 == 0 else "ArrowLeft")
                page.wait_for_function(f"new Set(window.__frames.filter(f => f[1] > {moved}).map(f => f[0])).size"
                                       f" >= {views}", timeout=120000)
                frames = page.evaluate(f"window.__frames.filter(f => f[1] > {moved})")
                axial = min(t for v, t in frames if v == 0)
                figures["single"].append(axial - moved)
                socket = page.evaluate(f"window.__ws.filter(f => f[1] > {moved})")
                sent = [t for kind, t in socket if kind == "send"]
                received = [t for kind, t in socket if kind == "receive" and t <= axial]
                if sent and received:  # the page's side: move -> sent, last message in -> axial frame shown
                    figures["to_server"].append(min(sent) - moved)
                    figures["shown"].append(axial - max(received))
                figures["all"].append(max(min(t for v, t in frames if v == view) for view in range(views)) - moved)
            for index in range(args.bursts):
                page.wait_for_timeout(args.settle_ms)
                key = "ArrowRight" if index % 2 == 0 else "ArrowLeft"
                first = page.evaluate("performance.now()")
                for _ in range(args.burst):
                    last = page.evaluate("performance.now()")
                    page.keyboard.press(key)
                    page.wait_for_timeout(40)
                page.wait_for_function(f"window.__frames.some(f => f[0] === 0 && f[1] > {last})", timeout=120000)
                page.wait_for_timeout(args.settle_ms)  # the burst's last frames and the still frame after them
                axial = [t for v, t in page.evaluate(f"window.__frames.filter(f => f[1] > {first})") if v == 0]
                interactive = axial[:-1] if len(axial) > 1 else axial  # the last one is the still frame at rest
                figures["burst"].append(max(interactive) - last)
                figures["burst_frames"].append(len(axial))
            if segment:
                started = time.perf_counter()
                page.click("#bts-segment")
                page.wait_for_selector("#bts-message:has-text('segmented in')", timeout=900000)
                figures["segment"] = time.perf_counter() - started
            browser.close()
    finally:
        stop(process)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    standard_case.add_options(parser)
    parser.add_argument("--case", type=Path, help="a folder with the standard case's phases and times.json")
    parser.add_argument("--moves", type=int, default=7)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--burst", type=int, default=5, help="moves per burst (a drag)")
    parser.add_argument("--settle-ms", type=int, default=2500)
    parser.add_argument("--segment", action="store_true", help="also time Segment click -> overlay")
    parser.add_argument("--only", choices=("before", "after"), help="time one station only")
    parser.add_argument("--write-case", type=Path, metavar="FOLDER",
                        help="only write the case's phases and map into FOLDER (for --case FOLDER), then exit")
    args = parser.parse_args()
    if args.write_case:
        write_case(args.write_case, args)
        return 0
    if not Path(CHROMIUM).exists():
        print(f"needs {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 1

    results, logs = {}, {}
    print("load average before: " + " ".join(f"{n:.2f}" for n in os.getloadavg()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        size = write_case(data / "standard", args)
        for label, env in (("before", PLAIN), ("after", {})):
            if args.only and label != args.only:
                continue
            log = Path(tmp) / f"station-{label}.log"
            results[label] = time_station(data, args, env, log, segment=args.segment and label == "after")
            logs[label] = [line for line in log.read_text().splitlines() if "station:" in line]

    print("load average after: " + " ".join(f"{n:.2f}" for n in os.getloadavg()))
    labels = [label for label in ("before", "after") if label in results]

    def row(name, key, reduce, target=None):
        values = [reduce(results[label][key]) for label in labels]
        cells = "".join(f"{value:>10.0f}" for value in values)
        ratio = f"{values[-1] / target:>8.2f}" if target and "after" in results else f"{'-':>8}"
        print(f"{name:<66}{cells}{target or '-':>10}{ratio}")

    print(f"\n{'browser, ' + size + ' voxels, generated map (ms)':<66}" + "".join(f"{label:>10}" for label in labels)
          + f"{'target':>10}{'ratio':>8}")
    print(f"(n = {args.moves} moves, {args.bursts} drags per station)")
    row("slider move -> axial view updated, median", "single", statistics.median, TARGET_MS)
    row("slider move -> axial view updated, worst", "single", max)
    row("slider move -> all three views updated, median", "all", statistics.median)
    row("slider move -> all three views updated, worst", "all", max)
    row(f"drag ({args.burst} moves 40 ms apart): last move -> final frame, median", "burst", statistics.median)
    row("drag: last move -> final frame, worst", "burst", max)
    row("drag: axial frames streamed per drag, median", "burst_frames", statistics.median)
    row("  in the page: move -> sent on the websocket, median", "to_server", statistics.median)
    row("  in the page: last message received -> axial frame shown, median", "shown", statistics.median)
    print("open case with its map (s): " + ", ".join(f"{label} {results[label]['open']:.1f}" for label in labels))
    if "segment" in results.get("after", {}):
        print(f"Segment click -> overlay on screen (s): {results['after']['segment']:.1f}")
    for label in labels:
        moves = ", ".join(f"{m:.0f}" for m in results[label]["single"])
        every = ", ".join(f"{m:.0f}" for m in results[label]["all"])
        drags = ", ".join(f"{m:.0f}" for m in results[label]["burst"])
        print(f"{label}: axial (ms) {moves}; all three {every}; drags {drags}; station log:\n  "
              + "\n  ".join(logs[label][-12:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
