"""``ocycle-dist archive list`` and ``ocycle-dist archive export``: what the archive holds, and a time range of it
back as audio (decrypted with the owner's identity)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import ConfigError
from .catalog import report, scan
from .export import GAP_POLICIES, ExportError, export, parse_time
from .keys import read_identities
from .names import format_time

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def default_dir() -> str:
    """``OCYCLE_ARCHIVE_DIR``, as the workers read it (default ``archive``)."""
    return os.environ.get("OCYCLE_ARCHIVE_DIR") or "archive"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``archive`` subcommand's subcommands and flags."""
    sub = parser.add_subparsers(dest="archive_command", required=True)
    listing = sub.add_parser("list", help="streams, time ranges and gaps of the archive (nothing is decrypted)")
    listing.add_argument("--dir", default=None, help="the archive directory (default OCYCLE_ARCHIVE_DIR, 'archive')")
    listing.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    ex = sub.add_parser(
        "export",
        help="decrypt a time range of a stream into one WAV or FLAC file",
        description="Decrypt the archive files covering a time range, join them sample-exactly and write one file.",
    )
    ex.add_argument("out", metavar="OUT", help="the file to write: .wav or .flac (16-bit)")
    ex.add_argument("--identity", "-i", metavar="KEY", help="age identity file (AGE-SECRET-KEY-1...) to decrypt with")
    ex.add_argument("--from", dest="start", metavar="T0", help="start: ISO 8601 (UTC if no zone) or epoch seconds")
    ex.add_argument("--to", dest="end", metavar="T1", help="end (exclusive); default: the end of the stream")
    ex.add_argument("--stream", metavar="ID", help="the stream (as `archive list` names it); needed if several")
    ex.add_argument("--dir", default=None, help="the archive directory (default OCYCLE_ARCHIVE_DIR, 'archive')")
    ex.add_argument(
        "--gaps", choices=GAP_POLICIES, default="silence", help="silence: fill gaps (reported); fail: refuse"
    )
    ex.add_argument("--force", action="store_true", help="replace OUT if it exists")


def main_archive(args: argparse.Namespace) -> int:
    """The ``ocycle-dist archive`` command; returns its exit code (0 done, 1 failed, 2 usage)."""

    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    directory = args.dir or default_dir()
    try:
        if not os.path.isdir(directory):
            raise ConfigError("dir", directory, "an archive directory (OCYCLE_ARCHIVE_DIR)")
        catalog = scan(directory)
        if args.archive_command == "list":
            if args.json:
                print(json.dumps({
                    "directory": str(catalog.directory),
                    "streams": [s.as_dict() for s in catalog.streams.values()],
                    "temporary": [p.name for p in catalog.temporary],
                }, indent=2))  # fmt: skip
            else:
                for line in report(catalog):
                    print(line)
            return EXIT_OK
        identities = read_identities(args.identity, "identity") if args.identity else None
        start = parse_time(args.start, "from") if args.start else None
        end = parse_time(args.end, "to") if args.end else None
        done = export(
            catalog,
            args.out,
            identities=identities,
            stream=args.stream,
            start_us=start,
            end_us=end,
            gaps=args.gaps,
            force=args.force,
            say=err,
        )
    except ConfigError as exc:
        err(f"ocycle-dist archive {args.archive_command}: {exc}")
        return EXIT_USAGE
    except ExportError as exc:
        err(f"ocycle-dist archive export: {exc}")
        return EXIT_FAILED
    end_time = format_time(round(done.time_of(done.frames)))
    err(
        f"wrote {args.out}: {done.frames / done.rate:.3f} s ({done.frames} samples at {done.rate} Hz) of stream"
        f" {done.stream}, {format_time(round(done.start_us))} .. {end_time}, from {len(done.pieces)} file(s),"
        f" {len(done.gaps)} gap(s)" + (" filled with silence" if done.gaps else "")
    )
    return EXIT_OK
