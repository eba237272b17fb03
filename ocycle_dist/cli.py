"""The ``ocycle-dist`` command: ``demo`` (the main job), ``stream`` (a device's producer), ``status``, ``archive``."""

from __future__ import annotations

import argparse
import sys


def status(broker: str | None) -> int:
    """Print queue depth per task queue, workers seen, tasks running and results pending on ``broker``."""
    from .remote.protocol import CHUNK_PREFIX, REPLY_PREFIX
    from .remote.redis_client import connect, redact
    from .remote.settings import Settings
    from .remote.worker import make_app

    settings = Settings.from_env(broker_url=broker)
    client = connect(settings.broker_url, socket_timeout=3.0, master_name=settings.sentinel_master)
    inspect = make_app(settings).control.inspect(timeout=1.0)
    replies = inspect.ping() or {}
    queues = {settings.queue}
    for worker_queues in (inspect.active_queues() or {}).values():
        queues.update(q["name"] for q in worker_queues)
    print(f"broker: {redact(settings.broker_url)}")
    for queue in sorted(queues):
        print(f"queue {queue!r}: {client.llen(queue)} tasks waiting")
    print(f"tasks delivered to workers, not yet acknowledged: {client.hlen('unacked')}")
    for key in sorted(client.scan_iter(REPLY_PREFIX + "*")):
        print(f"results waiting for their producer in {key.decode()}: {client.llen(key)}")
    print(f"claimed chunks stored: {sum(1 for _ in client.scan_iter(CHUNK_PREFIX + '*'))}")
    print(f"workers seen: {len(replies)}" + "".join(f"\n  {name}" for name in sorted(replies)))
    return 0


COMMANDS = ("demo", "stream", "status")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script. A package the command needs and this install lacks (a device's
    install has no Celery) is named, with the extra to install (``demo``'s own for the demo), exit code 2."""
    from .extras import install_hint

    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except ModuleNotFoundError as exc:
        command = next((a for a in argv if a in COMMANDS), None)
        hint = install_hint(exc.name, "demo" if command == "demo" else None)
        if hint is None:  # not an optional package: a broken install, shown as it is
            raise
        print(f"ocycle-dist{' ' + command if command else ''}: {hint}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ocycle-dist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="stream audio through three consumers (SPL 0.5 s, model 2 s, FLAC 10 s)")
    demo.add_argument(
        "--broker", help="Redis URL; default OCYCLE_BROKER_URL, else an embedded server and worker (child processes)"
    )
    demo.add_argument("--seconds", type=float, default=12.0, help="seconds of synthetic audio (default 12)")
    demo.add_argument("--wav", help="stream this WAV/FLAC file instead of a synthetic signal")
    demo.add_argument("--realtime", action="store_true", help="pace the source at real time")
    from .stream import EPILOG, add_arguments

    stream = sub.add_parser(
        "stream",
        help="stream stdin PCM, a sound file or a microphone through consumers (Celery tasks)",
        description="Stream audio through consumers, each chunk a Celery task; results on stdout, progress on stderr.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(stream)
    st = sub.add_parser("status", help="queue depth, workers seen, results pending")
    st.add_argument("--broker", help="Redis URL; default OCYCLE_BROKER_URL")
    from .archive.cli import add_arguments as add_archive_arguments

    add_archive_arguments(sub.add_parser("archive", help="the encrypted FLAC archive: list it, export a time range"))
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import main_demo

        return main_demo(args.broker, args.seconds, args.wav, args.realtime)
    if args.command == "stream":
        from .stream import main_stream

        return main_stream(args)
    if args.command == "archive":
        from .archive.cli import main_archive

        return main_archive(args)
    return status(args.broker)


if __name__ == "__main__":
    sys.exit(main())
