"""The browser station end to end: Debian's chromium, driven by Playwright, against a real
station (``breasttumorseg serve``) on 127.0.0.1.

Load the bundled sample study, Segment, move the threshold slider, paint a stroke; then, as
reader R1 of a reader study, start a case, paint, submit, and check on disk that the journal,
the times and the segmentation are there and right. Screenshots are saved to
``Testing/artifacts/station/`` (look at them). Skipped without /usr/bin/chromium (``.ci/run``
installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from breasttumorseg.core.resources import SAMPLE_STUDY_FOLDER
from breasttumorseg.readerstudy.journal import read_events

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "Testing" / "artifacts" / "station"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")]


def sample_case_with_map(folder: Path, probability_of) -> np.ndarray:
    """The bundled sample's phases and times copied into ``folder`` (created) beside a
    ``probability.nii.gz`` on its grid, ``probability_of(tumor mask)``; returns the tumor mask."""
    folder.mkdir(parents=True)
    for path in [*SAMPLE_STUDY_FOLDER.glob("phase_*.nii.gz"), SAMPLE_STUDY_FOLDER / "times.json"]:
        shutil.copy(path, folder / path.name)
    reference = sitk.ReadImage(str(SAMPLE_STUDY_FOLDER / "phase_01.nii.gz"))
    tumor = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_STUDY_FOLDER / "tumor_mask.nii.gz"))) > 0
    probability = sitk.GetImageFromArray(np.asarray(probability_of(tumor), dtype=np.float32))
    probability.CopyInformation(reference)
    sitk.WriteImage(probability, str(folder / "probability.nii.gz"))
    return tumor


def open_station_page(playwright, port: int, *, init_script: str | None = None, timeout_ms: int = 60000):
    """Headless chromium on the station at ``port``, its page shown (the case drawer's Open button
    there): ``(browser, page)``; ``init_script`` runs in the page before the station's own."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--disable-background-networking"])
    page = browser.new_page(viewport={"width": 1400, "height": 850})
    if init_script is not None:
        page.add_init_script(init_script)
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector("#bts-open-case", timeout=timeout_ms)
    return browser, page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_station(*options: str, host: str = "127.0.0.1", addresses: int = 1, device: str = "cpu", log=None,
                  env=None):
    """``breasttumorseg serve`` in a child process (``env``: variables added to this process's);
    returns (process, port, the ``addresses`` lines it printed: one per reader when tokens are required)."""
    port = free_port()
    log = Path(log) if log else Path(tempfile.mkstemp(prefix="station-", suffix=".log")[1])
    process = subprocess.Popen([sys.executable, "-m", "breasttumorseg", "serve", "--host", host, "--port", str(port),
                                "--device", device, *options],
                               stdout=subprocess.PIPE, stderr=open(log, "w"),
                               text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if f":{port}/" in line:
            lines.append(line.strip())
            if len(lines) == addresses:
                return process, port, lines
    process.kill()
    raise AssertionError(f"station did not start:\n{log.read_text()[-3000:]}")


def stop(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture()
def study(tmp_path):
    """A one-reader, two-arm study of one case, the bundled sample (its AI result not prepared)."""
    phases = sorted(SAMPLE_STUDY_FOLDER.glob("phase_*.nii.gz"))
    times = json.loads((SAMPLE_STUDY_FOLDER / "times.json").read_text())["times_s"]
    path = tmp_path / "study" / "study.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"name": "browser test", "seed": 1, "readers": ["R1"],
                                "arms": {"manual": {}, "assisted": {"model": "hirsch-unet3d-phantom"}},
                                "idle_after_s": 2, "autosave_every_s": 5,
                                "cases": [{"id": "sample", "phases": [str(p) for p in phases], "times_s": times,
                                           "reference": str(SAMPLE_STUDY_FOLDER / "tumor_mask.nii.gz")}]}))
    return path


def settled_text(page, selector: str, quiet_ms: int = 2000) -> str:
    """The text of ``selector`` once it has not changed for ``quiet_ms`` (measurements follow
    edits after a short delay)."""
    text = page.locator(selector).first.inner_text()
    while True:
        page.wait_for_timeout(quiet_ms)
        now = page.locator(selector).first.inner_text()
        if now == text:
            return text
        text = now


def paint_stroke(page, box, start=(0.42, 0.32), end=(0.46, 0.36)) -> None:
    """Drag across the axial view (fractions of its box) with the left button."""
    x0, y0 = box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"]
    x1, y1 = box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * step / 10, y0 + (y1 - y0) * step / 10)
        page.wait_for_timeout(30)
    page.mouse.up()


def test_segment_threshold_paint_and_a_reader_case_in_the_browser(tmp_path, study):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data"
    data.mkdir()
    process, port, lines = start_station("--study", str(study), "--data", str(data))
    try:
        assert lines[-1] == f"station: http://127.0.0.1:{port}/"
        with sync_playwright() as playwright:
            browser, page = open_station_page(playwright, port)

            # the sample study, segmented
            page.click("#bts-open-case")
            page.wait_for_selector("#bts-segment", timeout=60000)
            assert page.locator("#bts-phases tr").count() == 4
            page.click("#bts-segment")                                  # Segment, then Cancel
            page.wait_for_selector("#bts-segment:has-text('Cancel')", timeout=30000)
            page.click("#bts-segment")
            page.wait_for_selector("#bts-error:has-text('cancelled')", timeout=60000)
            page.wait_for_selector("#bts-segment:has-text('Segment')", timeout=30000)
            page.click("#bts-segment")
            page.wait_for_selector("#bts-threshold", timeout=180000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "1-segmented.png"))
            volume_before = page.locator("#bts-measurements tr").first.inner_text()
            assert "mL" in volume_before

            # the threshold slider: the segment, the views and the measurements follow
            axial_frame = page.locator("img.image-display-area").first.get_attribute("src")
            page.locator("#bts-threshold [role=slider]").focus()
            for _ in range(4):
                page.keyboard.press("ArrowRight")
            page.wait_for_function("before => document.querySelector('img.image-display-area').src !== before",
                                   arg=axial_frame, timeout=30000)
            page.wait_for_function(
                "before => document.querySelector('#bts-measurements tr').innerText !== before",
                arg=volume_before, timeout=30000)
            volume_after = settled_text(page, "#bts-measurements tr")
            page.screenshot(path=str(ARTIFACTS / "2-threshold.png"))

            # a paint stroke on the segment
            page.click("#bts-tab-edit")
            page.click("#bts-paint")
            axial = page.locator("img.image-display-area").first.bounding_box()
            paint_stroke(page, axial)
            page.screenshot(path=str(ARTIFACTS / "3-edit-tab.png"))
            page.wait_for_timeout(1000)
            page.click("#bts-tab-case")
            page.wait_for_function(
                "before => document.querySelector('#bts-measurements tr').innerText !== before",
                arg=volume_after, timeout=30000)
            volume_painted = settled_text(page, "#bts-measurements tr")
            page.screenshot(path=str(ARTIFACTS / "3-painted.png"))
            page.click("button:has(.mdi-undo)")                          # undo the stroke
            page.wait_for_function(
                "before => document.querySelector('#bts-measurements tr').innerText !== before",
                arg=volume_painted, timeout=30000)
            volume_undone = settled_text(page, "#bts-measurements tr")
            page.click("button:has(.mdi-redo)")                          # and redo it
            page.wait_for_function(
                "before => document.querySelector('#bts-measurements tr').innerText !== before",
                arg=volume_undone, timeout=30000)
            volume_redone = settled_text(page, "#bts-measurements tr")
            page.click("#bts-export-seg")
            page.wait_for_selector("#bts-message:has-text('tumor.seg.nrrd')", timeout=30000)
            page.click("#bts-export-nifti")
            page.wait_for_selector("#bts-message:has-text('tumor_label.nii.gz')", timeout=30000)

            # the reader study: R1 reads the case in both arms (from scratch, and refining the AI,
            # whose result the station computes first: the study was not prepared)
            page.click("#bts-tab-reader")
            page.locator("#bts-reader").click(force=True)
            page.click(".v-list-item:has-text('R1')")
            page.wait_for_selector("#bts-worklist", timeout=30000)
            for reading in (1, 2):
                page.click("#bts-tab-reader")
                page.click("#bts-start-case")
                page.wait_for_selector("#bts-message:has-text('timer started')", timeout=240000)
                if reading == 1:
                    page.wait_for_timeout(4000)                         # idle (2 s in this study) ...
                    page.mouse.move(axial["x"] + 50, axial["y"] + 50)  # ... until the mouse moves
                    page.mouse.move(axial["x"] + 80, axial["y"] + 90)
                    page.wait_for_timeout(500)
                page.click("#bts-paint")
                paint_stroke(page, axial)
                page.wait_for_timeout(1500)
                if reading == 2:                                        # an undone and redone stroke
                    page.click("button:has(.mdi-undo)")
                    page.wait_for_timeout(500)
                    page.click("button:has(.mdi-redo)")
                    page.wait_for_timeout(1000)
                page.click("#bts-tab-reader")
                page.wait_for_function(
                    "/[1-9]\\d* edits?/.test(document.querySelector('#bts-reading-status').innerText)", timeout=30000)
                page.screenshot(path=str(ARTIFACTS / f"4-reading-{reading}.png"))
                page.click("#bts-submit")
                page.wait_for_selector("#bts-message:has-text('submitted sample.')", timeout=30000)
                page.wait_for_selector(f"#bts-reading-status:has-text('{reading}/2 cases done')", timeout=30000)
            assert page.locator("#bts-start-case").is_disabled()        # nothing left to read
            page.screenshot(path=str(ARTIFACTS / "5-submitted.png"))
            browser.close()
    finally:
        stop(process)

    assert volume_after != volume_before
    assert _millilitres(volume_painted) > _millilitres(volume_after)  # the stroke added tumor
    assert volume_undone == volume_after and volume_redone == volume_painted
    exported = data / "exports" / "Sample_study"
    segment = sitk.GetArrayFromImage(sitk.ReadImage(str(exported / "tumor.seg.nrrd")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(exported / "tumor_label.nii.gz")))
    assert segment.any() and np.array_equal(segment > 0, label > 0)
    results = study.parent / "results" / "R1"
    events = read_events(results / "journal.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "opened" and kinds[-1] == "submitted" and kinds.count("submitted") == 2
    assert kinds.index("idle") < kinds.index("active") < kinds.index("edited")  # the page reports activity
    effects = {e["arm"]: [x["effect"] for x in events if x["event"] == "edited" and x["arm"] == e["arm"]]
               for e in events if e["event"] == "opened"}
    assert effects["manual"] == ["Paint"] and effects["assisted"][-2:] == ["Undo", "Redo"]
    submitted = {e["arm"]: e for e in events if e["event"] == "submitted"}
    assert set(submitted) == {"manual", "assisted"}
    for event in submitted.values():
        assert event["case"] == "sample" and 0 < event["active_s"] <= event["wall_s"] < 600
    ai = _voxels(study.parent / "results" / "_ai" / "sample.seg.nrrd") > 0
    manual = _voxels(results / "sample.manual.seg.nrrd") > 0
    assisted = _voxels(results / "sample.assisted.seg.nrrd") > 0
    assert ai.any() and assisted[ai].all()                      # refined from the AI's segmentation
    assert 0 < manual.sum() < manual.size // 100                # from scratch: a stroke ...
    assert (manual & ai).sum() < ai.sum() // 2                  # ... and not the AI's tumor (blinded)
    shutil.copy(results / "journal.jsonl", ARTIFACTS / "journal.jsonl")


def _voxels(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _millilitres(row_text: str) -> float:
    return float(row_text.split()[-2])


#: JavaScript run before the page's own: keep the text of every message the page sends on its websocket
#: (wslink's msgpack frames hold method names and state keys as plain UTF-8).
RECORD_SENT = """(() => {
  window.__sent = [];
  const Original = window.WebSocket;
  window.WebSocket = function (...options) {
    const socket = new Original(...options);
    const send = socket.send.bind(socket);
    socket.send = (data) => {
      const bytes = data.buffer ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data);
      window.__sent.push([performance.now(), new TextDecoder('latin1').decode(bytes)]);
      return send(data);
    };
    return socket;
  };
  window.WebSocket.prototype = Original.prototype;
  Object.assign(window.WebSocket, Original);
})()"""


@pytest.mark.skipif(os.environ.get("BREASTTUMORSEG_STATION_PLAIN_VIEWS", "") not in ("", "0"),
                    reason="BREASTTUMORSEG_STATION_PLAIN_VIEWS is set")
def test_a_threshold_move_sends_the_threshold_only_and_the_slider_jumps(tmp_path):
    """What a slider move costs the page (breasttumorseg_station.slider): the released arrow key is not
    sent to the three views as interaction events, the thumb has no transition, the value the
    slider's own component holds is the one sent."""
    from playwright.sync_api import sync_playwright

    sample_case_with_map(tmp_path / "data" / "reviewed", lambda tumor: np.where(tumor, 0.9, 0.1))
    process, port, _ = start_station("--data", str(tmp_path / "data"))
    try:
        with sync_playwright() as playwright:
            browser, page = open_station_page(playwright, port, init_script=RECORD_SENT)
            page.locator("#bts-case").click(force=True)
            page.click(".v-list-item:has-text('reviewed')")
            page.click("#bts-open-case")
            page.wait_for_selector("#bts-threshold", timeout=120000)
            page.wait_for_timeout(1500)
            slider = page.locator("#bts-threshold [role=slider]")
            assert slider.get_attribute("aria-valuenow") == "0.5"
            parts = ", ".join(f"#bts-threshold {part}" for part in (".v-slider-thumb", ".v-slider-thumb *",
                                                                   ".v-slider-track__fill"))
            transitions = page.evaluate(f"[...document.querySelectorAll('{parts}')]"
                                        ".map(e => getComputedStyle(e).transitionDuration)")
            assert transitions and set(transitions) == {"0s"}, transitions

            axial_frame = page.locator("img.image-display-area").first.get_attribute("src")
            slider.focus()
            moved = page.evaluate("performance.now()")
            page.keyboard.press("ArrowRight")
            page.wait_for_function("before => document.querySelector('img.image-display-area').src !== before",
                                   arg=axial_frame, timeout=30000)
            page.wait_for_timeout(500)
            sent = [text for at, text in page.evaluate("window.__sent") if at > moved]
            assert slider.get_attribute("aria-valuenow") == "0.55"
            browser.close()
    finally:
        stop(process)
    assert any("trame.state.update" in text and "bts_threshold" in text for text in sent), sent
    assert not [text for text in sent if "trame.rca.event" in text]  # the key's release stayed in the drawer
