"""Reader-study mode: timed, blinded annotation sessions that never lose data, and their analysis.

``definition``  the study file (cases, readers, arms, washout), read and validated
``schedule``    each reader's randomised reading order with its washout
``timer``       wall and active time of one reading, idle detection
``journal``     the append-only, fsync-ed event journal of a reader
``session``     one reader's worklist, open case, autosave and submit
``display``     the open reading as one line for a display (panel, toolbar, station)
``analysis``    metrics, consensus references and times from the journals and segmentations
``statistics``  Wilcoxon signed-rank, TOST, Vargha-Delaney, bootstrap intervals
``report``      the Markdown/HTML report with Zhang et al.'s Table 4, plots and CSV
``synthetic``   a synthetic two-reader study on phantoms (known answers, the README's demo)

None of these import slicer or qt; the Slicer layer drives a :class:`session.ReaderSession`.
"""
