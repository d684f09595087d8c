"""``breasttumorseg serve``: start the browser reader station.

The station (``breasttumorseg_station``) runs Slicer's core and trame; the backend imports
neither, so this command replaces its own process with ``python -m breasttumorseg_station``
and the same options. See that package for what the station does and how it is secured.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ..core.errors import InputError
from ..core.resources import MODULE_FOLDER

DEFAULT_PORT = 8750


def add_serve(commands, common) -> None:
    p = commands.add_parser(
        "serve", parents=[common], help="the reader station in the browser (trame-slicer)",
        description="Start the BreastTumorSeg station: Slicer's core on this machine, its views in a browser. "
                    "Binds to 127.0.0.1 unless --host says otherwise; any other address needs the access tokens "
                    "it prints (one per reader with --study). With --room and --study: a reading room, one "
                    "station process per reader, each on its own port with its own token.")
    add_serve_options(p)
    p.set_defaults(run=run_serve)


def add_serve_options(p) -> None:
    """The station's options (also its own parser's: ``python -m breasttumorseg_station``)."""
    p.add_argument("--study", type=Path, help="a reader-study file: its readers get their worklists")
    p.add_argument("--data", type=Path, help="folder of case folders (phase files); exports are written here")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1; any other needs the printed access tokens)")
    p.add_argument("--port", type=int, help=f"port (default: {DEFAULT_PORT}; with --room the first reader's, "
                                                "the others following it, default: random free ports)")
    p.add_argument("--token", help="the access token to require off 127.0.0.1 (default: random; not with --study)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda (default: auto)")
    p.add_argument("--room", action="store_true",
                   help="a reading room: one station process per reader of --study, supervised (restarted when "
                        "it dies); every reader gets a port and a token of their own, also on 127.0.0.1")
    p.add_argument("--links", type=Path, help="with --room: the file the readers' addresses are written to, "
                                              "readable by you only (default: room-links.txt beside the study)")
    p.add_argument("--reader", help="serve only this reader of --study, with the token in the environment "
                                    "variable BREASTTUMORSEG_STATION_TOKEN (what --room starts per reader)")


def run_serve(args) -> int:
    if importlib.util.find_spec("trame_slicer") is None:
        raise InputError("the station needs trame-slicer (pip install trame-slicer==2.0.0)", "serve")
    argv = [sys.executable, "-m", "breasttumorseg_station", "--host", args.host, "--device", args.device]
    for option, value in (("--port", args.port), ("--study", args.study), ("--data", args.data),
                          ("--token", args.token), ("--links", args.links), ("--reader", args.reader)):
        if value is not None:
            argv += [option, str(value)]
    if args.room:
        argv.append("--room")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(MODULE_FOLDER)] + [p for p in [env.get("PYTHONPATH")] if p])
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached
