"""What the slice views show, without Qt: a series' proxy volume, its browsed phase, the overlay.

A Volume Sequence is shown through its sequence browser's proxy volume; browsing selects
which phase the proxy holds. The probability map is the views' foreground layer with an
opacity (composite nodes of every slice view).
"""

from __future__ import annotations


def _nodesOfClass(scene, className: str) -> list:
    return [scene.GetNthNodeByClass(i, className) for i in range(scene.GetNumberOfNodesByClass(className))]


def browserOf(volume):
    """The sequence browser whose proxy ``volume`` is, or None."""
    scene = volume.GetScene() if volume is not None else None
    if scene is None:
        return None
    for browser in _nodesOfClass(scene, "vtkMRMLSequenceBrowserNode"):
        if browser.IsProxyNodeID(volume.GetID()):
            return browser
    return None


def displayedVolumeOf(source):
    """The volume showing a DCE source in the views: a sequence's proxy volume, else the source itself."""
    if source is not None and source.IsA("vtkMRMLSequenceNode") and source.GetScene() is not None:
        for browser in _nodesOfClass(source.GetScene(), "vtkMRMLSequenceBrowserNode"):
            proxy = browser.GetProxyNode(source)
            if proxy is not None:
                return proxy
    return source


def browseTo(proxy, phaseNode) -> bool:
    """Show ``phaseNode`` (a data node of the sequence behind ``proxy``, e.g. the first
    post-contrast phase) in the proxy volume; False when ``proxy`` is no sequence's proxy
    or the sequence does not hold ``phaseNode``."""
    browser = browserOf(proxy)
    if browser is None or phaseNode is None:
        return False
    sequence = browser.GetSequenceNode(proxy)
    if sequence is None:
        return False
    for index in range(sequence.GetNumberOfDataNodes()):
        if sequence.GetNthDataNode(index) is phaseNode:
            browser.SetSelectedItemNumber(index)
            return True
    return False


def setOverlayOpacity(scene, probabilityNode, opacity: float) -> int:
    """Set ``opacity`` (0..1) in every slice view showing ``probabilityNode`` as foreground;
    returns how many views show it."""
    shown = 0
    if probabilityNode is None:
        return shown
    for composite in _nodesOfClass(scene, "vtkMRMLSliceCompositeNode"):
        if composite.GetForegroundVolumeID() == probabilityNode.GetID():
            composite.SetForegroundOpacity(opacity)
            shown += 1
    return shown
