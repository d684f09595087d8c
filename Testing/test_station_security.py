"""The station's guards: folders it may touch, and tokens off 127.0.0.1 (a real station)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from breasttumorseg.core.errors import InputError
from breasttumorseg.core.resources import SAMPLE_STUDY_FOLDER

pytest.importorskip("trame_slicer")

from breasttumorseg_station.cases import SAMPLE_CASE, list_cases, open_case  # noqa: E402
from breasttumorseg_station.security import AccessPolicy, Folders, token_cookie  # noqa: E402

from test_station_browser import start_station, stop  # noqa: E402


@pytest.fixture()
def data(tmp_path):
    """A data folder with one case, a folder with too few phases, and links out of it."""
    folder = tmp_path / "data"
    (folder / "cases" / "a").mkdir(parents=True)
    for name in ("phase_00.nii.gz", "phase_01.nii.gz", "tumor_mask.nii.gz"):
        (folder / "cases" / "a" / name).write_bytes(b"x")
    (folder / "one").mkdir()
    (folder / "one" / "phase_00.nii.gz").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("phase_00.nii.gz", "phase_01.nii.gz"):
        (outside / name).write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(outside, folder / "escape")
    os.symlink(tmp_path / "secret.txt", folder / "secret-link.txt")
    (outside / "times.json").write_text('{"times_s": [0, 90]}')
    for name in ("mixed", "nested", "hard", "sidecar", "internal", "links", "result"):
        (folder / name).mkdir()
    for name in ("mixed", "nested", "hard", "sidecar", "internal", "result"):
        (folder / name / "phase_00.nii.gz").write_bytes(b"x")
    os.symlink(outside / "phase_01.nii.gz", folder / "mixed" / "phase_01.nii.gz")         # a file link out
    os.symlink(outside / "phase_01.nii.gz", folder / "links" / "hop")
    os.symlink(folder / "links" / "hop", folder / "nested" / "phase_01.nii.gz")          # a link to a link out
    os.link(outside / "phase_00.nii.gz", folder / "hard" / "phase_01.nii.gz")            # a hard link out
    (folder / "sidecar" / "phase_01.nii.gz").write_bytes(b"x")
    os.symlink(outside / "times.json", folder / "sidecar" / "times.json")                # a sidecar out
    os.symlink(folder / "cases" / "a" / "phase_01.nii.gz", folder / "internal" / "phase_01.nii.gz")  # inside
    (folder / "result" / "phase_01.nii.gz").write_bytes(b"x")
    os.symlink(outside / "phase_00.nii.gz", folder / "result" / "probability.nii.gz")     # a result out
    return folder


@pytest.mark.parametrize("path, message", [
    ("../outside", "'..' is not allowed"),
    ("cases/../../outside", "'..' is not allowed"),
    ("/etc/passwd", "is not a path inside"),
    ("\\\\server\\share", "is not a path inside"),
    ("C:\\Windows", "is not a path inside"),
    ("escape", "leads outside"),
    ("escape/phase_00.nii.gz", "leads outside"),
    ("secret-link.txt", "leads outside"),
    ("", "is not a path inside"),
])
def test_paths_out_of_the_data_folder_are_refused(data, path, message):
    folders = Folders({"data": data})
    with pytest.raises(InputError, match=message):
        folders.inside("data", path)


def test_paths_inside_the_data_folder_resolve(data):
    folders = Folders({"data": data})
    assert folders.inside("data", "cases/a/phase_00.nii.gz") == (data / "cases/a/phase_00.nii.gz").resolve()
    assert folders.inside("data", "exports/new/tumor.seg.nrrd") == (data / "exports/new/tumor.seg.nrrd").resolve()
    with pytest.raises(InputError, match="no folder 'study'"):
        folders.inside("study", "x")


def test_cases_offered_are_the_sample_and_real_case_folders_only(data):
    folders = Folders({"data": data})
    # not 'one' (1 phase), not the folder link out, not a case with any file that is not proven inside
    assert list_cases(folders) == [SAMPLE_CASE, "cases/a", "internal"]
    assert [p.name for p in open_case(folders, "cases/a").phases] == ["phase_00.nii.gz", "phase_01.nii.gz"]
    assert [p.name for p in open_case(folders, "internal").phases] == ["phase_00.nii.gz", "phase_01.nii.gz"]
    for name in ("escape", "../outside", "one"):
        with pytest.raises(InputError):
            open_case(folders, name)


@pytest.mark.parametrize("case, message", [
    ("mixed", r"'.*mixed/phase_01.nii.gz' leads outside the data folder"),
    ("nested", r"'.*nested/phase_01.nii.gz' leads outside the data folder"),
    ("hard", r"'.*hard/phase_01.nii.gz' has 2 hard links"),
    ("sidecar", r"'.*sidecar/times.json' leads outside the data folder"),
    ("result", r"'.*result/probability.nii.gz' leads outside the data folder"),
])
def test_a_case_with_a_file_out_of_the_data_folder_is_refused_naming_the_file(data, case, message):
    folders = Folders({"data": data})
    with pytest.raises(InputError, match=message) as error:
        open_case(folders, case)
    assert "\n" not in str(error.value)


def test_a_pinned_file_is_the_file_checked_even_when_its_name_is_swapped(data, tmp_path):
    folders = Folders({"data": data})
    phase = data / "cases" / "a" / "phase_00.nii.gz"
    phase.write_bytes(b"the checked phase")
    with folders.pinned_files("data", [phase]) as (pinned,):
        assert pinned.name == phase.name and pinned.parent != phase.parent
        phase.unlink()
        os.symlink(tmp_path / "secret.txt", phase)      # swapped for a link out after the check
        assert pinned.read_bytes() == b"the checked phase"
    assert not pinned.parent.exists()


def test_a_folder_swapped_for_a_link_between_check_and_open_is_refused(data, tmp_path, monkeypatch):
    folders = Folders({"data": data})
    checked = folders._resolved("data", "cases/a/phase_00.nii.gz")   # the check saw the real folder
    os.rename(data / "cases" / "a", data / "cases" / "a-moved")
    os.symlink(tmp_path / "outside", data / "cases" / "a")          # then the folder became a link out
    monkeypatch.setattr(folders, "_resolved", lambda root, path: checked)
    with pytest.raises(InputError, match="changed while being opened"):
        folders.check_file("data", "cases/a/phase_00.nii.gz")


def test_an_export_folder_swapped_for_a_link_is_written_where_it_was_checked(data, tmp_path):
    folders = Folders({"data": data})
    with folders.pinned_folder("data", "exports/case") as folder:
        os.rename(data / "exports" / "case", data / "exports" / "moved")
        os.symlink(tmp_path / "outside", data / "exports" / "case")
        (folder / "tumor.seg.nrrd").write_bytes(b"segmentation")
    assert (data / "exports" / "moved" / "tumor.seg.nrrd").read_bytes() == b"segmentation"
    assert not (tmp_path / "outside" / "tumor.seg.nrrd").exists()
    with pytest.raises(InputError, match="leads outside"), folders.pinned_folder("data", "exports/case"):
        pass                                                            # now a link out: refused


def test_tokens_only_off_the_local_address():
    assert not AccessPolicy.for_host("127.0.0.1", ["R1"]).require_token
    policy = AccessPolicy.for_host("0.0.0.0", ["R1", "R2"])
    assert policy.require_token and sorted(policy.tokens.values()) == ["R1", "R2"]
    token_r1 = next(t for t, r in policy.tokens.items() if r == "R1")
    assert policy.reader_of(token_r1) == "R1"
    for wrong in (None, "", token_r1[:-1] + "x"):
        with pytest.raises(PermissionError):
            policy.reader_of(wrong)
    policy.connect("R1")
    with pytest.raises(PermissionError, match="in use by another reader"):
        policy.connect("R2")
    policy.disconnect()
    policy.connect("R2")
    assert AccessPolicy.for_host("10.0.0.5", [], token="fixed").tokens == {"fixed": None}


@pytest.mark.slow
def test_a_station_off_localhost_requires_each_readers_token(tmp_path):
    import aiohttp

    study = tmp_path / "study.json"
    study.write_text(json.dumps({"readers": ["R1", "R2"], "arms": {"manual": {}},
                                 "cases": [{"id": "c", "phases": ["a.nii.gz", "b.nii.gz"]}]}))
    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / name).write_bytes(b"not read until a case opens")
    process, port, lines = start_station("--study", str(study), "--data", str(tmp_path), host="127.0.0.2",
                                            addresses=2)
    try:
        urls = dict(line.split(": ", 1) for line in lines)
        assert set(urls) == {"R1", "R2"} and all("?token=" in url for url in urls.values())
        base = f"http://127.0.0.2:{port}"
        token = {reader: url.split("?token=")[1] for reader, url in urls.items()}

        async def check():
            async with aiohttp.ClientSession() as anonymous:
                for path in ("/", "/index.html", "/ws", f"/?token={token['R1']}x"):
                    async with anonymous.get(base + path) as response:
                        assert response.status == 403, path
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await anonymous.ws_connect(base + "/ws")
                assert refused.value.status == 403
            r1 = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            r2 = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            async with r1, r2:
                async with r1.get(f"{base}/?token={token['R1']}") as page:
                    assert page.status == 200 and "<html" in (await page.text()).lower()
                assert [c.key for c in r1.cookie_jar] == [token_cookie(port)]           # named by the port
                async with r2.get(f"{base}/?token={token['R2']}") as page:
                    assert page.status == 200
                socket_r1 = await r1.ws_connect(base + "/ws")        # the cookie carries R1's token
                with pytest.raises(aiohttp.WSServerHandshakeError) as busy:
                    await r2.ws_connect(base + "/ws")
                assert busy.value.status == 409                       # R2 waits while R1 reads
                await socket_r1.close()
                await asyncio.sleep(0.5)
                socket_r2 = await r2.ws_connect(base + "/ws")
                await socket_r2.close()

        asyncio.run(check())
    finally:
        stop(process)


@pytest.mark.parametrize("options, message", [
    (["--data", "/no/such/folder"], "/no/such/folder: is not a folder"),
    (["--study", "/no/such/study.json"], "/no/such/study.json: study file not found"),
])
def test_serve_with_bad_options_is_one_line_and_status_2(options, message):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "breasttumorseg", "serve", "--port", "0", *options],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [f"breasttumorseg serve: error: {message}"]


# ----------------------------------------------------------------------------- the station's open path
@pytest.fixture(scope="module")
def station(tmp_path_factory):
    """A real station (headless Slicer scene, no server started) on a data folder with a good
    case (the sample's phases), a case whose phases are not images and a case with a link out."""
    import shutil

    from trame.app import get_server

    from breasttumorseg_station.app import Station

    data = tmp_path_factory.mktemp("station") / "data"
    (data / "good").mkdir(parents=True)
    for phase in sorted(SAMPLE_STUDY_FOLDER.glob("phase_*.nii.gz"))[:2]:
        shutil.copy(phase, data / "good" / phase.name)
    (data / "broken").mkdir()
    for name in ("phase_00.nii.gz", "phase_01.nii.gz"):
        (data / "broken" / name).write_bytes(b"not an image")
    (data / "linked").mkdir()
    shutil.copy(data / "good" / "phase_00.nii.gz", data / "linked" / "phase_00.nii.gz")
    # a file out of the data folder
    os.symlink(SAMPLE_STUDY_FOLDER / "phase_01.nii.gz", data / "linked" / "phase_01.nii.gz")
    import numpy as np
    import SimpleITK as sitk

    reference = sitk.ReadImage(str(SAMPLE_STUDY_FOLDER / "phase_01.nii.gz"))
    tumor = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_STUDY_FOLDER / "tumor_mask.nii.gz"))) > 0
    probability = sitk.GetImageFromArray(np.where(tumor, 0.9, 0.1).astype(np.float32))
    probability.CopyInformation(reference)
    for name, image in (("reviewed", probability), ("misfit", probability[:, :, 1:])):
        shutil.copytree(data / "good", data / name)
        sitk.WriteImage(image, str(data / name / "probability.nii.gz"))
    return Station(get_server("open-path-test"), folders=Folders({"data": data}),
                   policy=AccessPolicy(require_token=False))


def _open(station, name):
    station.state.bts_case = name
    station.cases.open_case()
    return station.state.bts_error


@pytest.mark.slow
@pytest.mark.parametrize("bad, message", [("broken", "broken/phase_0"), ("linked", "leads outside the data folder")])
def test_a_failed_open_leaves_the_open_case_as_it_was(station, bad, message):
    assert _open(station, "good") == ""
    case = station.cases.case
    ids = {station.slicer.scene.GetNthNode(i).GetID() for i in range(station.slicer.scene.GetNumberOfNodes())}
    error = _open(station, bad)
    assert message in error and "\n" not in error
    assert station.cases.case is case and station.state.bts_case_open == "good"
    assert all(node.GetScene() is station.slicer.scene for node in case.volumes)
    after = {station.slicer.scene.GetNthNode(i).GetID() for i in range(station.slicer.scene.GetNumberOfNodes())}
    assert after == ids                                   # nothing added, nothing removed


@pytest.mark.slow
def test_a_case_with_its_probability_map_opens_segmented(station):
    import numpy as np
    import SimpleITK as sitk

    assert _open(station, "reviewed") == ""
    case = station.cases.case
    assert station.state.bts_has_result and station.state.bts_threshold == 0.5
    from breasttumorseg.segmentation.postprocess import ThresholdSettings, segment_probability

    mask = station.cases.tumor.segmentMask(case.segmentation, case.study.geometry)
    tumor = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_STUDY_FOLDER / "tumor_mask.nii.gz"))) > 0
    expected = segment_probability(np.where(tumor, 0.9, 0.1).astype(np.float32), case.study.geometry,
                                   ThresholdSettings())   # the map's 0.9 voxels at 0.5, holes filled
    assert mask.any() and np.array_equal(mask > 0, expected > 0) and (mask > 0)[tumor].all()
    assert [p.name for p in open_case(station.folders, "reviewed").phases] == ["phase_00.nii.gz", "phase_01.nii.gz"]


@pytest.mark.slow
def test_a_probability_map_off_the_grid_is_refused_and_nothing_stays(station):
    assert _open(station, "good") == ""
    scene = station.slicer.scene
    ids = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    error = _open(station, "misfit")
    assert "misfit/probability.nii.gz" in error and "grid" in error and "\n" not in error
    assert station.state.bts_case_open == "good"
    assert {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())} == ids


@pytest.mark.slow
def test_an_export_lands_in_the_data_folder_through_the_pinned_folder(station):
    assert _open(station, "good") == ""
    import numpy as np

    from BreastTumorSegLib import nodes

    study = station.cases.case.study
    segmentation, segment = nodes.addTumorSegmentation(station.slicer.scene, station.cases.case.source, study.geometry,
                                                       "tumor")
    mask = np.zeros(study.geometry.shape_zyx, np.uint8)
    mask[20:24, 100:110, 100:110] = 1
    nodes.setSegmentFromArray(segmentation, segment, mask, study.geometry)
    station.cases.case.segmentation = segmentation
    station.cases.export("nifti")
    assert station.state.bts_error == "" and station.state.bts_message == "exported exports/good/tumor_label.nii.gz"
    import SimpleITK as sitk

    written = sitk.GetArrayFromImage(
        sitk.ReadImage(str(station.folders.roots["data"] / "exports/good/tumor_label.nii.gz")))
    assert written.sum() == mask.sum()


@pytest.mark.slow
def test_the_station_starts_offscreen_without_trying_an_x_server(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("VTK_DEFAULT_OPENGL_WINDOW", raising=False)
    log = tmp_path / "station.log"
    process, _port, _lines = start_station(log=log)
    stop(process)
    text = log.read_text()
    assert "bad X server connection" not in text and "Traceback" not in text, text[-3000:]


# ----------------------------------------------------------------------------- the browser's own threats
def test_host_and_origin_allow_lists():
    local = AccessPolicy.for_host("127.0.0.1", [])
    assert local.allows_host("127.0.0.1:8080", "127.0.0.1", 8080) and local.allows_host("localhost:8080", None, 8080)
    assert local.allows_host("[::1]:8080", None, 8080)
    for forged in ("attacker.example:8080", "127.0.0.1:8081", "127.0.0.1", "", None, "localhost.attacker.example:8080"):
        assert not local.allows_host(forged, "127.0.0.1", 8080), forged
    assert local.allows_origin("http://127.0.0.1:8080", "127.0.0.1", 8080)
    assert local.allows_origin(None, "127.0.0.1", 8080)                    # not a browser
    for forged in ("http://evil.example", "http://127.0.0.1:9999", "null", "file://", "http://127.0.0.1:8080/x"):
        assert not local.allows_origin(forged, "127.0.0.1", 8080), forged
    remote = AccessPolicy.for_host("10.1.2.3", ["R1"])
    assert (remote.allows_host("10.1.2.3:8080", "10.1.2.3", 8080)
            and not remote.allows_host("evil:8080", "10.1.2.3", 8080))


@pytest.mark.slow
def test_forged_host_and_origin_and_other_methods_are_refused_without_tokens():
    import aiohttp

    process, port, _ = start_station()
    base = f"http://127.0.0.1:{port}"
    try:
        async def check():
            async with aiohttp.ClientSession() as client:
                for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
                    async with client.get(base + "/index.html", headers={"Host": host}) as response:
                        assert response.status == 200, host
                for path in ("/", "/index.html", "/ws"):                   # DNS rebinding: another name
                    async with client.get(base + path, headers={"Host": f"attacker.example:{port}"}) as response:
                        assert response.status == 421, path
                async with client.post(base + "/", data=b"x") as response:
                    assert response.status == 405
                for origin in ("http://evil.example", "http://127.0.0.1:1", f"http://attacker.example:{port}"):
                    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                        await client.ws_connect(base + "/ws", origin=origin)
                    assert refused.value.status == 403, origin
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await client.ws_connect(base + "/ws", headers={"Host": "attacker.example"},
                                            origin="http://attacker.example")
                assert refused.value.status == 421
                socket_ok = await client.ws_connect(base + "/ws", origin=base)    # the station's own page
                await socket_ok.close()

        asyncio.run(check())
    finally:
        stop(process)


@pytest.mark.slow
def test_forged_host_and_origin_are_refused_with_a_valid_token(tmp_path):
    import aiohttp

    process, port, lines = start_station("--token", "sesame", host="127.0.0.2")
    base = f"http://127.0.0.2:{port}"
    try:
        async def check():
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
                async with client.get(f"{base}/?token=sesame") as page:
                    assert page.status == 200
                async with client.get(f"{base}/?token=sesame", headers={"Host": f"attacker.example:{port}"}) as page:
                    assert page.status == 421
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await client.ws_connect(base + "/ws", origin="http://evil.example")   # the cookie is sent
                assert refused.value.status == 403
                socket_ok = await client.ws_connect(base + "/ws", origin=base)
                await socket_ok.close()

        asyncio.run(check())
    finally:
        stop(process)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_a_page_from_another_local_port_or_a_rebound_name_cannot_use_the_station(tmp_path):
    """In a real browser: a page served from another port of 127.0.0.1 opens a websocket to the
    station (refused), and the station reached by a name that resolves to 127.0.0.1 (DNS
    rebinding, mapped in the browser) is refused."""
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    from test_station_browser import CHROMIUM, free_port

    process, port, _ = start_station()
    attack = tmp_path / "attack"
    attack.mkdir()
    (attack / "index.html").write_text(f"""<html><body><script>
        const socket = new WebSocket("ws://127.0.0.1:{port}/ws");
        socket.onopen = () => {{ document.title = "connected"; }};
        socket.onerror = () => {{ document.title = "refused"; }};
        fetch("http://127.0.0.1:{port}/", {{method: "POST", mode: "no-cors", body: "x"}}).catch(() => {{}});
    </script></body></html>""")
    other = free_port()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(attack), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", other), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--disable-background-networking", "--host-resolver-rules=MAP rebound.example 127.0.0.1"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{other}/index.html")
            page.wait_for_function("document.title !== ''", timeout=30000)
            assert page.title() == "refused"
            response = page.goto(f"http://rebound.example:{port}/")
            assert response.status == 421
            response = page.goto(f"http://127.0.0.1:{port}/")                  # the station's own page still works
            assert response.status == 200
            page.wait_for_selector("#bts-open-case", timeout=60000)
            browser.close()
    finally:
        server.shutdown()
        stop(process)


@pytest.mark.slow
def test_a_reading_that_fails_to_start_leaves_the_open_case_as_it_was(station, tmp_path):
    for name in ("p0.nii.gz", "p1.nii.gz"):
        (tmp_path / name).write_bytes(b"not an image")
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"readers": ["R1"], "arms": {"manual": {}},
                                 "cases": [{"id": "c", "phases": ["p0.nii.gz", "p1.nii.gz"]}]}))
    assert _open(station, "good") == ""
    case = station.cases.case
    scene = station.slicer.scene
    ids = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    station.reading.logic.openStudy(study, "R1")
    try:
        station.reading.start_next_case()
        assert "p0.nii.gz" in station.state.bts_error or "p1.nii.gz" in station.state.bts_error
        assert station.cases.case is case and station.state.bts_case_open == "good"
        assert {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())} == ids
    finally:
        station.reading.logic.closeStudy()
