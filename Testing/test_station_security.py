"""The station's guards: folders it may touch, and tokens off 127.0.0.1 (a real station)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from breasttumorseg.errors import InputError

pytest.importorskip("trame_slicer")

from breasttumorseg_station.cases import SAMPLE_CASE, list_cases, open_case  # noqa: E402
from breasttumorseg_station.security import TOKEN_COOKIE, AccessPolicy, Folders  # noqa: E402

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
    assert list_cases(folders) == [SAMPLE_CASE, "cases/a"]  # not 'one' (1 phase), not the link out
    assert [p.name for p in open_case(folders, "cases/a").phases] == ["phase_00.nii.gz", "phase_01.nii.gz"]
    for name in ("escape", "../outside", "one"):
        with pytest.raises(InputError):
            open_case(folders, name)


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
                assert any(c.key == TOKEN_COOKIE for c in r1.cookie_jar)
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
