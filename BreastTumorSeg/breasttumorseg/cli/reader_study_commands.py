"""``breasttumorseg study ...``: check, schedule, prepare and analyse a reader study.

    study validate STUDY_FILE                  check the file, every case's files and grids
    study worklist STUDY_FILE [--reader R]     each reader's reading order and progress
    study prepare STUDY_FILE                   the assisted arm's AI segmentations, once per case
    study analyze STUDY_FILE --output DIR      metrics, times, statistics and the report
    study synthetic DIR                        a synthetic two-reader study (simulated readers)
"""

from __future__ import annotations

from pathlib import Path

from ..core import atomic
from .console import progress_bar, warn
from ..core.errors import InputError
from ..readerstudy.definition import read_study
from ..readerstudy.schedule import reading_order
from ..readerstudy.ai import prepare_ai
from ..readerstudy.analysis import analyze_study, reader_records
from ..readerstudy.report import table4, write_report
from ..readerstudy.synthetic import make_synthetic_study


def add_study(commands, common) -> None:
    p = commands.add_parser("study", parents=[common], help="reader studies: validate, worklist, prepare, analyze",
                            description="Reader studies (manual vs AI-assisted segmentation): check a study file, "
                                        "show worklists, prepare the AI results, analyse the readings.")
    sub = p.add_subparsers(dest="study_command", required=True, metavar="STEP")

    v = sub.add_parser("validate", parents=[common], help="check a study file and every case's files")
    v.add_argument("study", type=Path, metavar="STUDY_FILE")
    v.set_defaults(run=run_validate)

    w = sub.add_parser("worklist", parents=[common], help="each reader's reading order, done and remaining")
    w.add_argument("study", type=Path, metavar="STUDY_FILE")
    w.add_argument("--reader", help="only this reader")
    w.set_defaults(run=run_worklist)

    r = sub.add_parser("prepare", parents=[common], help="compute the assisted arm's AI segmentations",
                       description="Segment every case with the assisted arm's model and threshold "
                                   "(cases already prepared with the same settings are kept).")
    r.add_argument("study", type=Path, metavar="STUDY_FILE")
    r.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N (default: auto)")
    r.set_defaults(run=run_prepare)

    a = sub.add_parser("analyze", parents=[common], help="metrics, times, statistics and the report",
                       description="Compare every submitted reading and the AI with the references; write "
                                   "report.md, report.html, plots and CSV files of every number into DIR.")
    a.add_argument("study", type=Path, metavar="STUDY_FILE")
    a.add_argument("--output", type=Path, required=True, metavar="DIR", help="report folder")
    a.add_argument("--consensus", choices=("intersection", "union", "majority"),
                   help="reference for cases without one (default: the study file's, else majority)")
    a.add_argument("--equivalence-margin", type=float, metavar="DICE",
                   help="TOST bounds +-DICE (default: the study file's, else the readers' range)")
    a.add_argument("--device", default="auto", help="for AI results not prepared yet (default: auto)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    a.set_defaults(run=run_analyze)

    s = sub.add_parser("synthetic", parents=[common], help="write a synthetic two-reader study (simulated)",
                       description="Phantom cases, a study file, the AI's results and two simulated readers "
                                   "(times drawn around Zhang et al.'s Table 4) in DIR: a demo and a test bed, "
                                   "not a measurement of people.")
    s.add_argument("outdir", type=Path, metavar="DIR")
    s.add_argument("--seed", type=int, default=2026, help="reading orders and simulation (default: 2026)")
    s.add_argument("--device", default="auto", help="for the AI (default: auto)")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")
    s.set_defaults(run=run_synthetic)


def run_validate(args) -> int:

    study = read_study(args.study)
    with_reference = sum(c.reference is not None for c in study.cases)
    print(f"{args.study}: valid: {len(study.cases)} cases ({with_reference} with a reference), "
          f"{len(study.readers)} readers, arms {', '.join(study.arms)}, washout {study.washout_cases} cases")
    return 0


def run_worklist(args) -> int:

    study = read_study(args.study, check_files=False)
    readers = [study.check_reader(args.reader)] if args.reader else list(study.readers)
    records = reader_records(study, warn=warn)
    for reader in readers:
        order = reading_order(study, reader)
        done = sum(records[reader][r.key].status == "done" for r in order)
        print(f"{reader}: {done} of {len(order)} readings done")
        for reading in order:
            record = records[reader][reading.key]
            times = f"  wall {record.wall_s / 60:5.1f} min, active {record.active_s / 60:5.1f} min" \
                if record.status != "to do" else ""
            print(f"  {reading.position + 1:3d}. {reading.case_id:<16} {reading.arm:<9} {record.status:<12}{times}")
    return 0


def run_prepare(args) -> int:

    study = read_study(args.study)
    with progress_bar(args, "AI results") as progress:
        records = prepare_ai(study, device=args.device, progress=progress, warn=warn)
    if not args.quiet:
        for record in records:
            print(f"{record['case']}: {record['voxels']} voxels, {record['seconds']:.1f} s")
    return 0


def run_analyze(args) -> int:

    if args.equivalence_margin is not None and not 0.0 < args.equivalence_margin < 1.0:
        raise InputError(f"must be a Dice difference between 0 and 1, got {args.equivalence_margin:g}",
                         "--equivalence-margin")
    atomic.check_output_dir(args.output, args.overwrite)
    study = read_study(args.study)
    with progress_bar(args, "analysing") as progress:
        analysis = analyze_study(study, consensus=args.consensus, equivalence_margin=args.equivalence_margin,
                                 device=args.device, progress=progress, warn=warn)
    if not analysis.rows:
        raise InputError("no reading has been submitted yet: nothing to analyse", args.study)
    write_report(args.output, analysis, overwrite=args.overwrite)
    if not args.quiet:
        header, body = table4(analysis)
        widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for row in body:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        print(f"\nreport: {args.output / 'report.html'} (and report.md, CSV files, plots)")
    return 0


def run_synthetic(args) -> int:

    atomic.check_output_dir(args.outdir, args.overwrite)
    with atomic.atomic_output_dir(args.outdir, overwrite=args.overwrite) as staging:
        with progress_bar(args, "synthetic study") as progress:
            make_synthetic_study(staging, seed=args.seed, device=args.device, progress=progress, warn=warn)
    if not args.quiet:
        print(f"wrote a synthetic reader study to {args.outdir}; analyse it with\n"
              f"  breasttumorseg study analyze {args.outdir / 'study.json'} --output {args.outdir / 'report'}")
    return 0
