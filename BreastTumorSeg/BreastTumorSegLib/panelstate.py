"""What the panel shows for where the user stands, decided without Qt.

The Qt sections ask :func:`panelState` which sections have something to show (the others
stay collapsed until they do), what the first-step hint says and why Segment is greyed.
A section opens when it gains something to show and closes when it loses it; in between
the user's own expand / collapse is kept (the Qt layer applies only the changes).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The panel's sections in display order (the .ui's ``<name>CollapsibleButton``).
SECTIONS = ("inputs", "model", "run", "result", "refine", "measurements", "export", "readerStudy")
#: The sections that show the AI's result: blinded (collapsed, disabled) while a reader reads a case.
AI_SECTIONS = ("model", "run", "result", "refine", "measurements", "export")


@dataclass(frozen=True)
class PanelFacts:
    """Where the user stands."""

    hasSource: bool = False  # a DCE series is chosen
    includedPhases: int = 0  # phases ticked in the phase table
    hasResult: bool = False  # a tumor segmentation is selected in Result
    hasMeasurements: bool = False
    running: bool = False  # a segmentation runs in the background
    reading: bool = False  # a reader-study case is open
    sampleAvailable: bool = True  # the bundled sample study is there to load


@dataclass(frozen=True)
class PanelState:
    expanded: dict  # section -> True when it has something to show
    hint: str  # the next step in one or two sentences; "" when there is nothing to say
    segmentEnabled: bool
    segmentReason: str  # the Segment button's tooltip: what it does, or why it is greyed
    showSampleButton: bool
    showPhaseTable: bool  # an empty table says nothing: shown once a series is chosen


def panelState(facts: PanelFacts) -> PanelState:
    """The sections to expand, the hint and the Segment button for ``facts``."""
    ready = facts.hasSource and facts.includedPhases >= 2
    expanded = {
        "inputs": not facts.reading,
        "model": ready and not facts.reading,
        "run": ready and not facts.reading,
        "result": facts.hasResult and not facts.reading,
        "refine": facts.hasResult and not facts.reading,
        "measurements": facts.hasMeasurements and not facts.reading,
        "export": False,  # opened by the user when the result is final
        "readerStudy": facts.reading,
    }
    if facts.reading:
        hint = ("Reading a case: segment it in Segment Editor; the reading toolbar at the top of the window "
                "holds the timer, Pause, Submit and Flag.")
    elif not facts.hasSource:
        hint = ("Start here: choose the DCE series (a Volume Sequence, a MultiVolume or several volumes) below"
                + (", or press Load sample study to try a synthetic study." if facts.sampleAvailable else "."))
    elif facts.includedPhases < 2:
        hint = "Tick at least two phases in the table: the earliest is the pre-contrast, the others post-contrast."
    elif facts.running:
        hint = "Segmenting in the background; Slicer stays usable and Cancel stops it."
    elif not facts.hasResult:
        hint = "Press Segment to find the tumor (the model and device below have sensible defaults)."
    else:
        hint = "Adjust the tumor probability threshold in Result, refine in Segment Editor, then measure and export."
    if facts.reading:
        reason = "Blinded while a reader-study case is open."
    elif facts.running:
        reason = "Stop the segmentation now; nothing is added to the scene."
    elif not facts.hasSource:
        reason = "Choose a DCE series in Inputs first."
    elif facts.includedPhases < 2:
        reason = "Include a pre-contrast and at least one post-contrast phase in Inputs first."
    else:
        reason = "Segment the tumor in a background process; the button becomes Cancel while it runs."
    return PanelState(expanded=expanded, hint=hint,
                      segmentEnabled=not facts.reading and (facts.running or ready),
                      segmentReason=reason, showSampleButton=facts.sampleAvailable and not facts.hasSource,
                      showPhaseTable=facts.hasSource)


def sectionChanges(previous: dict, current: dict) -> dict:
    """The sections whose expanded state ``current`` changes from ``previous`` (the rest keep
    whatever the user chose); all of ``current`` when there is no ``previous``."""
    if not previous:
        return dict(current)
    return {name: value for name, value in current.items() if previous.get(name) != value}
