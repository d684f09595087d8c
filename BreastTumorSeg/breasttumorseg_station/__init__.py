"""The BreastTumorSeg reader station: Slicer's core in a browser, on trame-slicer.

A second front end beside the Slicer module, on the same code: the Slicer logic
(``BreastTumorSegLib``: loading, segmenting, thresholding, measuring, exporting, the reader
study) runs unchanged against the MRML scene of a headless ``trame_slicer.core.SlicerApp``;
trame-slicer streams its slice views and runs its segment-editor effects (paint, erase,
scissors, islands, undo) in the browser.

``security``  where the station may read and write, and who may connect
``cases``     the cases a station offers (the bundled sample, a data folder)
``scene``     the headless Slicer core, exposed where ``slicer.util`` looks
``app``       the trame application: puts the parts below together
``layout``    the page: slice views and the Case, Edit and Reader study tabs
``case_control``  the Case tab's actions: open, segment, threshold, measure, export
``reading``   the Reader study tab's actions: worklist, timed readings, submit
``page``      the page's state, one-line messages and views, shared by both
``slider``    a threshold move kept small: the latest of a burst, light frames while moving
``measuring`` measuring in a forked child the next change stops
``room``      a reading room: one station process per reader of a study, supervised
``__main__``  ``python -m breasttumorseg_station`` (what ``breasttumorseg serve`` runs)
"""
