"""``python -m breasttumorseg_station``: start a station (``breasttumorseg serve`` runs this).

Prints one line per address to open (one per reader, with their token, when tokens are
required) and serves until interrupted. Bad options: one line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from breasttumorseg.core.errors import BreastTumorSegError


def build_parser() -> argparse.ArgumentParser:
    from breasttumorseg.cli.serve_command import add_serve_options

    parser = argparse.ArgumentParser(prog="breasttumorseg serve",
                                     description="The BreastTumorSeg reader station: Slicer's core in the browser.")
    add_serve_options(parser)
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
    """The station the options describe; one-line :class:`InputError` for bad options."""
    from breasttumorseg.core.errors import InputError

    from .app import Station
    from .security import AccessPolicy, Folders

    readers = []
    if args.study is not None:
        if args.token:
            raise InputError("with --study every reader gets a token of their own; leave --token out", "--token")
        from breasttumorseg.readerstudy.definition import read_study

        readers = list(read_study(args.study).readers)
    if args.data is not None and not Path(args.data).is_dir():
        raise InputError("is not a folder", args.data)
    folders = {"data": args.data, "study": args.study.parent if args.study else None}
    policy = AccessPolicy.for_host(args.host, readers, args.token)
    return Station(folders=Folders(folders), policy=policy, study_path=args.study, device=args.device)


if __name__ == "__main__":
    raise SystemExit(main())
