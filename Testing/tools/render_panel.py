"""Render the module panel as a user meets it, to PNG files (PySide6, offscreen; no Slicer needed).

    QT_QPA_PLATFORM=offscreen python Testing/tools/render_panel.py [--output Docs/panel]

Writes ``1-first-open.png``, ``2-after-result.png``, ``3-reading.png`` (the panel) and
``3-reading-toolbar.png`` (the toolbar added to the main window during a reading), each
laid out at the module panel's usual width (420 px), and prints each picture's size and the
panel's size-hint width. See Testing/panel_harness.py for what is and is not real here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "BreastTumorSeg"))

import panel_harness as harness  # noqa: E402

from BreastTumorSegLib.panelstate import PanelFacts  # noqa: E402

from breasttumorseg.readerstudy.display import clock_text, reading_status_text  # noqa: E402

#: A reading in progress as the reader-study logic reports it.
READING = {"open": True, "case": "case03", "arm": "assisted", "position": 2, "total": 4, "done": 1,
           "active_s": 83.0, "wall_s": 125.0, "n_edits": 7, "paused": False, "idle": False}


def render_all(output: Path) -> dict:
    """Render the three states into ``output``; returns {file name: (width, height, size-hint width)}."""
    sizes = {}
    rows = harness.sample_rows()
    states = (
        ("1-first-open.png", PanelFacts(), {}),
        ("2-after-result.png", PanelFacts(hasSource=True, includedPhases=len(rows), hasResult=True,
                                          hasMeasurements=True),
         {"rows": rows, "measurements": harness.sample_measurements()}),
        ("3-reading.png", PanelFacts(hasSource=True, includedPhases=len(rows), hasResult=True, reading=True),
         {"rows": rows, "reading": {"study": "/studies/breast-ai/study.json", "reader": "R1",
                                    "status": reading_status_text(READING),
                                    "worklist": [("1", "case01", "manual", "done", "12.4"),
                                                 ("2", "case03", "assisted", "reading", "1.4"),
                                                 ("3", "case02", "assisted", "to do", "0.0"),
                                                 ("4", "case04", "manual", "to do", "0.0")]}}),
    )
    for name, facts, extra in states:
        panel, _ = harness.load_ui()
        harness.apply_state(panel, facts, **extra)
        width, height = harness.render(panel, output / name)
        sizes[name] = (width, height, panel.sizeHint().width())
    toolbar = harness.reading_toolbar({"case": "case03 (assisted) 2/4", "clock": clock_text(READING["active_s"]),
                                       "paused": False, "idle": False, "status": reading_status_text(READING)})
    width, height = harness.render(toolbar, output / "3-reading-toolbar.png", width=toolbar.sizeHint().width())
    sizes["3-reading-toolbar.png"] = (width, height, toolbar.sizeHint().width())
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("Docs/panel"), help="folder for the PNG files")
    args = parser.parse_args()
    for name, (width, height, hint) in render_all(args.output).items():
        print(f"{args.output / name}: {width} x {height} px (size hint width {hint} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
