"""``python -m breasttumorseg_station``: start a station (``breasttumorseg serve`` runs this).

Prints one line per address to open (one per reader, with their token, when tokens are
required) and serves until interrupted. Bad options: one line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from breasttumorseg.errors import BreastTumorSegError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breasttumorseg serve",
                                     description="The BreastTumorSeg reader station: Slicer's core in the browser.")
    parser.add_argument("--study", type=Path, help="a reader-study file: its readers get the worklist")
    parser.add_argument("--data", type=Path, help="folder of case folders (phase files); exports are written here")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any other needs the printed access tokens)")
    parser.add_argument("--port", type=int, default=8750, help="port (default 8750; 0: any free port)")
    parser.add_argument("--token", help="the access token to require (default: random); not with --study")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda (default: auto)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("breasttumorseg").setLevel(logging.INFO)
    try:
        station = make_station(args)
    except BreastTumorSegError as error:
        print(f"breasttumorseg serve: error: {error}", file=sys.stderr)
        return 2

    def announce(**_):
        port = station.server.port
        for reader, url in station.policy.addresses(f"http://{args.host}:{port}/"):
            print(f"{reader}: {url}" if reader else f"station: {url}", flush=True)

    station.server.controller.on_server_ready.add(announce)
    station.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                         disable_logging=True, timeout=0)  # timeout 0: no shutdown when the last page closes
    return 0


def make_station(args):
    from breasttumorseg.errors import InputError

    from .app import Station
    from .security import AccessPolicy, Folders

    folders = {}
    for name, path in (("data", args.data), ("study", args.study.parent if args.study else None)):
        if path is not None:
            if not Path(path).is_dir():
                raise InputError("is not a folder", path)
            folders[name] = path
    readers = []
    if args.study is not None:
        if args.token:
            raise InputError("with --study every reader gets a token of their own; leave --token out", "--token")
        from breasttumorseg.readerstudy.definition import read_study

        readers = list(read_study(args.study).readers)
    policy = AccessPolicy.for_host(args.host, readers, args.token)
    return Station(folders=Folders(folders), policy=policy, study_path=args.study, device=args.device)


if __name__ == "__main__":
    raise SystemExit(main())
