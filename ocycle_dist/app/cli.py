"""The ``ocycle-dist`` command: ``demo`` (the main job), ``stream`` (a device's producer), ``status``, ``purge``,
``archive``."""

from __future__ import annotations

import argparse
import sys


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "oldest sent at an unknown time (not a producer's message)"
    return f"oldest waiting {seconds:.1f} s"


def status(broker: str | None, queues: list[str] | None = None) -> int:
    """Print, for every queue (the default one, the demo's, every queue a worker ever declared on the broker,
    those running workers consume, and ``queues``), the messages waiting and the age of the oldest; then
    deliveries not yet acknowledged, results pending, messages the workers refused, and the workers that answer."""
    from collections import Counter

    from ..remote.backlog import known_queues, read_backlog
    from ..remote.intake import dead_letters
    from ..remote.protocol import CHUNK_PREFIX, DEAD_KEY, REPLY_PREFIX
    from ..remote.redis_client import connect, redact
    from ..remote.settings import Settings
    from ..remote.worker import make_app
    from .consumers import QUEUES

    settings = Settings.from_env(broker_url=broker)
    client = connect(settings.broker_url, socket_timeout=3.0, master_name=settings.sentinel_master)
    app = make_app(settings)
    inspect = app.control.inspect(timeout=1.0)
    replies = inspect.ping() or {}
    consumed: dict[str, list[str]] = {}
    for worker, worker_queues in (inspect.active_queues() or {}).items():
        for q in worker_queues:
            consumed.setdefault(q["name"], []).append(worker)
    names = known_queues(client, [settings.queue, *QUEUES, *(queues or ()), *consumed])
    print(f"broker: {redact(settings.broker_url)}")
    for item in read_backlog(client, names):
        readers = consumed.get(item.queue)
        who = f"{len(readers)} worker(s) consume it" if readers else "NO running worker consumes it"
        print(f"queue {item.queue!r}: {item.messages} messages waiting, {_age(item.oldest_age)}; {who}")
    print(f"tasks delivered to workers, not yet acknowledged: {client.hlen('unacked')}")
    for key in sorted(client.scan_iter(REPLY_PREFIX + "*")):
        print(f"results waiting for their producer in {key.decode()}: {client.llen(key)}")
    print(f"claimed chunks stored: {sum(1 for _ in client.scan_iter(CHUNK_PREFIX + '*'))}")
    dead = dead_letters(client)
    kinds = Counter(str(record.get("kind")) for record in dead)
    print(f"messages refused by workers (junk, unknown tasks, failed seals), kept in {DEAD_KEY}: {len(dead)}"
          + "".join(f"\n  {kind}: {n}" for kind, n in kinds.most_common()))  # fmt: skip
    if dead:
        kind, queue, at, why = (dead[0].get(k) for k in ("kind", "queue", "at", "why"))
        print(f"  the latest: {kind} from queue {queue!r} at {at}: {why}")
    print(f"workers seen: {len(replies)}" + "".join(f"\n  {name}" for name in sorted(replies)))
    return 0


def purge(broker: str | None, queues: str) -> int:
    """Empty the queues (comma-separated), each chunk's producer told at once (:mod:`.remote.purge`)."""
    from ..remote.purge import purge_queue
    from ..remote.redis_client import connect, redact
    from ..remote.settings import Settings
    from ..remote.worker import make_app

    settings = Settings.from_env(broker_url=broker)
    client = connect(settings.broker_url, socket_timeout=10.0, master_name=settings.sentinel_master)
    app = make_app(settings)
    print(f"broker: {redact(settings.broker_url)}")
    for queue in dict.fromkeys(q.strip() for q in queues.split(",") if q.strip()):
        done = purge_queue(app, client, queue, settings)
        print(
            f"queue {queue!r}: {done.messages} messages purged, {done.chunks} chunks answered 'Purged' to their"
            f" producers, {done.other} other messages deleted"
        )
    return 0


COMMANDS = ("demo", "stream", "status", "purge", "archive")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script. A package the command needs and this install lacks (a device's
    install has no Celery) is named, with the extra to install (``demo``'s own for the demo), exit code 2."""
    from ..extras import install_hint

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
    from .stream import EPILOG, add_arguments, add_metrics_arguments, metrics_address

    add_metrics_arguments(demo)

    stream = sub.add_parser(
        "stream",
        help="stream stdin PCM, a sound file or a microphone through consumers (Celery tasks)",
        description="Stream audio through consumers, each chunk a Celery task; results on stdout, progress on stderr.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(stream)
    st = sub.add_parser("status", help="per queue: messages waiting, the oldest's age; workers seen, results pending")
    st.add_argument("--broker", help="Redis URL; default OCYCLE_BROKER_URL")
    st.add_argument("--queue", action="append", help="a queue to report besides the known ones (repeatable)")
    pu = sub.add_parser("purge", help="empty queues; each chunk's producer is told at once (counted failed: Purged)")
    pu.add_argument("--broker", help="Redis URL; default OCYCLE_BROKER_URL")
    pu.add_argument("-Q", "--queues", required=True, help="the queues to empty, comma-separated (e.g. model)")
    from ..archive.cli import add_arguments as add_archive_arguments

    add_archive_arguments(sub.add_parser("archive", help="the encrypted FLAC archive: list it, export a time range"))
    args = parser.parse_args(argv)
    if args.command == "purge":
        return purge(args.broker, args.queues)
    if args.command == "demo":
        from ..errors import ConfigError
        from .demo import main_demo

        try:
            return main_demo(args.broker, args.seconds, args.wav, args.realtime, metrics_address(args))
        except ConfigError as exc:
            print(f"ocycle-dist demo: {exc}", file=sys.stderr)
            return 2
    if args.command == "stream":
        from .stream import main_stream

        return main_stream(args)
    if args.command == "archive":
        from ..archive.cli import main_archive

        return main_archive(args)
    return status(args.broker, args.queue)


if __name__ == "__main__":
    sys.exit(main())
