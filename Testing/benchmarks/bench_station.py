"""Browser station latencies on the standard case, measured in the browser (chromium + Playwright).

Standard case (DESIGN.md section 7): a synthetic phantom, 448 x 448 x 160 voxels, 6 phases.
A station (``breasttumorseg serve --data``) serves it on 127.0.0.1; headless chromium opens
it and times, from the page:

* **Segment click -> overlay on screen**: from the click until the threshold slider has
  appeared (the result is in the page) and the axial view's image has been replaced;
* **slider move -> updated view**: from an arrow-key move of the threshold slider until the
  axial view's image has been replaced (the segment re-thresholded and re-rendered), the
  median of ``--moves`` moves.

    python Testing/benchmarks/bench_station.py [--device cpu|cuda] [--size 448 448 160] [--moves 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "BreastTumorSeg"), str(ROOT / "Testing")]

import standard_case  # noqa: E402  (beside this script)
CHROMIUM = "/usr/bin/chromium"
#: JavaScript: the axial view's current image source (trame-rca replaces it on every new frame).
AXIAL_FRAME = "document.querySelector('img.image-display-area').src"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    standard_case.add_options(parser)
    parser.add_argument("--moves", type=int, default=5)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"needs {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 1

    from playwright.sync_api import sync_playwright

    from test_station_browser import start_station, stop

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        standard_case.write(data / "standard", args)
        process, port, _ = start_station("--data", str(data), device=args.device, log=Path(tmp) / "station.log")
        process_device = args.device
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                     args=["--disable-background-networking"])
                page = browser.new_page(viewport={"width": 1400, "height": 850})
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("#bts-open-case", timeout=120000)
                page.locator("#bts-case").click(force=True)
                page.click(".v-list-item:has-text('standard')")
                started = time.perf_counter()
                page.click("#bts-open-case")
                page.wait_for_selector("#bts-segment", timeout=300000)
                opened = time.perf_counter() - started

                frame = page.evaluate(AXIAL_FRAME)
                started = time.perf_counter()
                page.click("#bts-segment")
                page.wait_for_selector("#bts-threshold", timeout=600000)
                page.wait_for_function(f"{AXIAL_FRAME} !== {frame!r}", timeout=60000)
                segment_to_overlay = time.perf_counter() - started
                page.wait_for_timeout(1000)

                moves = []
                page.locator("#bts-threshold [role=slider]").focus()
                for index in range(args.moves):
                    page.wait_for_timeout(1500)  # the previous frame settled
                    frame = page.evaluate(AXIAL_FRAME)
                    started = time.perf_counter()
                    page.keyboard.press("ArrowRight" if index % 2 == 0 else "ArrowLeft")
                    page.wait_for_function(f"{AXIAL_FRAME} !== {frame!r}", timeout=60000)
                    moves.append(time.perf_counter() - started)
                message = page.inner_text("#bts-message")
                browser.close()
        finally:
            stop(process)

        station_log = [line for line in (Path(tmp) / "station.log").read_text().splitlines() if "station:" in line]
    slider = statistics.median(moves)
    print(f"{'measure (standard case, ' + process_device + ')':<44}{'value':>10}{'target':>10}{'ratio':>8}")
    print(f"{'open case (s)':<44}{opened:>10.2f}{'-':>10}{'-':>8}")
    target = 5.0 if args.device == "cuda" else 60.0
    print(f"{'Segment click -> overlay on screen (s)':<44}{segment_to_overlay:>10.2f}{target:>10.1f}"
          f"{segment_to_overlay / target:>8.2f}")
    print(f"{'slider move -> updated view, median (ms)':<44}{1000 * slider:>10.0f}{100:>10d}"
          f"{1000 * slider / 100:>8.2f}")
    print(f"slider moves (ms): {', '.join(f'{1000 * m:.0f}' for m in moves)}; station said: {message}")
    print("station log:\n  " + "\n  ".join(station_log))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
