"""``docker compose up`` for real: the images built, the stack up with scaled workers, the producer streaming.

Run by ``make test-deploy`` (CI, after ``make test``): see ``conftest.py`` for the engine and the images. The
tests run in order on one stack (``docker-compose.yml``, 3 ``worker`` + 2 ``worker-model``), then on the HA
stack (``docker-compose.ha.yml`` over it); each stack is torn down (``down -v``) at the end of its part.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyrage
import pytest

from .conftest import Compose, figure, in_container, scrape, sh

PASSWORD = "deploy-test"
IDENTITY = pyrage.x25519.Identity.generate()  # the archive's owner: the workers get only its public key
ARCHIVE_ENV = {"OCYCLE_ARCHIVE_RECIPIENTS": str(IDENTITY.to_public())}
BROKER = f"redis://:{PASSWORD}@redis:6379/0"
SENTINELS = ";".join(f"sentinel://:{PASSWORD}@sentinel{i}:26379{'/0' if i == 1 else ''}" for i in (1, 2, 3))
CONSUMERS = {"spl": 0.5, "classify": 2.0, "archive": 10.0}  # the demo's consumers, seconds per chunk
RESULT = re.compile(r"\[(\w+)\s+#(\d+)\s+t0=\s*\+\s*([\d.]+)s\]\s+(.*)$")
SUMMARY = re.compile(
    r"^\s+(\w+)\s+every .*: (\d+) chunks: (\d+) done, \d+ left, (\d+) failed, (\d+) dropped, (\d+) expired$"
)
WORKER_METRICS, PRODUCER_METRICS = 9808, 9100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Run:
    """A producer run (``compose run producer ocycle-dist demo ...``) read line by line as it goes."""

    proc: object
    lines: list[tuple[float, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ended: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[attr-defined]
            self.lines.append((time.monotonic(), line.rstrip("\n")))
        self.ended.set()

    def wait_for(self, predicate: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            assert not self.ended.is_set(), "the producer ended first:\n" + self.text()
            assert time.monotonic() < deadline, "timed out; the producer said:\n" + self.text()
            time.sleep(0.2)

    def finish(self, timeout: float) -> int:
        assert self.ended.wait(timeout), "the producer did not finish:\n" + self.text()
        return int(self.proc.wait(30))  # type: ignore[attr-defined]

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines[-60:])

    def results(self) -> list[tuple[float, str, int, float, str]]:
        """(arrival, consumer, seq, t0 offset, description) of each result line."""
        out = []
        for at, line in self.lines:
            if m := RESULT.search(line):
                out.append((at, m[1], int(m[2]), float(m[3]), m[4]))
        return out

    def summary(self) -> dict[str, dict[str, int]]:
        """Per consumer: chunks, done, failed, dropped, expired (the demo's last lines)."""
        keys = ("chunks", "done", "failed", "dropped", "expired")
        return {m[1]: dict(zip(keys, map(int, m.groups()[1:]), strict=True))
                for _, line in self.lines if (m := SUMMARY.match(line))}  # fmt: skip


def start_producer(stack: Compose, *args: str, broker: str = BROKER) -> Run:
    run = Run(stack.popen("run", "--rm", "-T", "--no-deps", "producer", "ocycle-dist", "demo", "--broker", broker,
                          "--metrics-port", str(PRODUCER_METRICS), "--metrics-host", "0.0.0.0", *args))  # fmt: skip
    threading.Thread(target=run.read, daemon=True).start()
    return run


def seqs_of(spans: str) -> list[int]:
    """``4-6,9`` as ``[4, 5, 6, 9]``."""
    out: list[int] = []
    for span in spans.split(","):
        first, _, last = span.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def done_count(run: Run, consumer: str) -> int:
    return sum(1 for r in run.results() if r[1] == consumer)


def assert_every_chunk_done_once(
    run: Run, *, expired_ok: tuple[str, ...] = (), once: bool = True
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Every chunk done (or, for ``expired_ok`` consumers, expired and counted), none failed or dropped, and each
    done chunk's result reported (``once``: exactly once). Returns the summary and the chunks reported twice."""
    summary = run.summary()
    assert set(summary) == set(CONSUMERS), run.text()
    twice_all = []
    for name, s in summary.items():
        assert s["failed"] == 0 and s["dropped"] == 0, (name, s)
        if name in expired_ok:
            assert s["done"] + s["expired"] == s["chunks"], (name, s)
        else:
            assert s["done"] == s["chunks"] and s["expired"] == 0, (name, s)
        seqs = [r[2] for r in run.results() if r[1] == name]
        twice = sorted(seq for seq in set(seqs) if seqs.count(seq) > 1)
        twice_all += [f"{name}#{seq}" for seq in twice]
        lines = [line for _, line in run.lines if any(f"#{seq} " in line for seq in twice)]
        assert len(set(seqs)) == s["done"], f"{name}: {s['done']} done, results for {len(set(seqs))}:\n{run.text()}"
        assert not (once and twice), f"{name}: results reported twice for {twice}:\n" + "\n".join(lines)
    return summary, twice_all


def archive_digests(stack: Compose) -> dict[str, str]:
    """sha256 of every archive file (`*.flac`, or encrypted `*.flac.age`), read in a worker container."""
    code = ("import hashlib, pathlib; [print(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) "
            "for p in sorted(pathlib.Path('/archive').glob('*.flac*'))]")  # fmt: skip
    out = in_container(stack.containers("worker")[0], code)
    return dict(line.split() for line in out.splitlines())


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            body = line[len(name) :]
            have = dict(re.findall(r'(\w+)="([^"]*)"', body.split("}")[0])) if body.startswith("{") else {}
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
    assert seen, f"no sample of {name} {labels}"
    return total


def wait_until(predicate: object, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, f"timed out after {timeout} s: {what}"
        time.sleep(0.25)
    return time.monotonic() - started


# ---- the stack: docker-compose.yml ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flower_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def stack(compose_command: list[str], images: str, flower_port: int) -> Iterator[Compose]:
    env = {"REDIS_PASSWORD": PASSWORD, "FLOWER_PORT": str(flower_port), **ARCHIVE_ENV}
    base = Compose(compose_command, "ocycledeploy", ("docker-compose.yml",), env)
    base.down()
    started = time.monotonic()
    try:
        base("up", "-d", "--scale", "worker=3", "--scale", "worker-model=2", "redis", "worker", "worker-model",
             "flower", timeout=600)  # fmt: skip
        workers = [*base.containers("worker"), *base.containers("worker-model")]
        assert len(workers) == 5, workers

        def all_answer() -> bool:
            ping = sh("docker", "exec", workers[0], "celery", "-A", "workers", "inspect", "ping", "-t", "3",
                      check=False, timeout=60)  # fmt: skip
            return ping.stdout.count("pong") >= 5

        wait_until(all_answer, 120, "the five workers answer a ping")
        figure(f"stack up (redis, 3 worker, 2 worker-model, flower) and every worker answering in"
               f" {time.monotonic() - started:.1f} s")  # fmt: skip
        yield base
    finally:
        base.down()  # (done already when the HA tests ran)


@pytest.fixture(scope="module")
def first_run(stack: Compose) -> tuple[Run, dict[str, str]]:
    """The demo's 60 s of audio, as fast as the workers take them, and the archive files it left."""
    run = start_producer(stack, "--seconds", "60")
    assert run.finish(300) == 0, run.text()
    return run, archive_digests(stack)


def test_images_run_the_installed_package_with_its_c_hot_path(stack: Compose) -> None:
    code = ("import ocycle_dist, workers; from ocycle_dist.hotpath import appender_class; "
            "print(ocycle_dist.__file__, workers.__file__, appender_class().__module__)")  # fmt: skip
    out = in_container(stack.containers("worker")[0], code)
    package, app, appender = out.split()
    assert "-packages/ocycle_dist/" in package and "-packages/workers/" in app
    assert appender == "ocycle_dist._speedups"


def test_producer_run_every_chunk_done_and_archived(stack: Compose, first_run: tuple[Run, dict[str, str]]) -> None:
    run, digests = first_run
    summary, _ = assert_every_chunk_done_once(run)
    assert {k: v["chunks"] for k, v in summary.items()} == {"spl": 120, "classify": 30, "archive": 6}
    paths = [r[4].split()[0] for r in run.results() if r[1] == "archive"]
    assert len(paths) == 6 and {p.rsplit("/", 1)[1] for p in paths} <= set(digests)
    assert all(p.endswith(".flac.age") for p in paths)  # encrypted to the owner's key
    code = f"import sys; sys.stdout.buffer.write(open({paths[0]!r}, 'rb').read())"
    sealed = subprocess.run(["docker", "exec", stack.containers("worker")[0], "python3", "-c", code],
                            capture_output=True, check=True, timeout=30).stdout  # fmt: skip
    assert pyrage.decrypt(sealed, [IDENTITY])[:4] == b"fLaC"  # only the owner's identity reads it
    figure("first run (60 s of audio, as fast as taken): " + ", ".join(f"{k} {v['done']}/{v['chunks']} done"
           for k, v in summary.items()) + f"; {len(digests)} FLAC files in the archive volume")  # fmt: skip


def test_flower_shows_each_chunk_of_batches_and_drains_as_its_own_task(
    stack: Compose, first_run: tuple[Run, dict[str, str]], flower_port: int
) -> None:
    import urllib.request

    broker_page = urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/broker", timeout=10).read().decode()
    for queue in ("spl", "model", "archive", "celery"):
        assert f"<td>{queue}</td>" in broker_page, queue
    ran = {path: 0.0 for path in ("message", "batch", "drain")}
    for worker in stack.containers("worker"):
        text = scrape(worker, WORKER_METRICS)
        for path in ran:
            ran[path] += metric(text, "ocycle_worker_chunks_total", path=path)
        assert metric(text, "ocycle_queue_messages", queue="spl") == 0  # the backlog gauges, all served
        assert metric(text, "ocycle_queue_oldest_age_seconds", queue="archive") == 0
    assert ran["batch"] + ran["drain"] > 0, f"no chunk travelled in a batch or a drain: {ran}"

    def flower_counts() -> tuple[float, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/metrics", timeout=10).read().decode()
        return (metric(text, "flower_events_total", task="workers.tasks.spl", type="task-succeeded"),
                metric(text, "flower_events_total", task="workers.tasks.spl", type="task-received"))  # fmt: skip

    wait_until(lambda: flower_counts() == (120.0, 120.0), 30, f"Flower sees 120 spl tasks: {flower_counts()}")
    figure(f"Flower: 120/120 spl chunks shown as tasks; spl+archive chunks run per path: {ran}")


def test_status_shows_a_queue_no_running_worker_consumes(stack: Compose) -> None:
    stack("stop", "-t", "10", "worker-model", timeout=120)
    try:
        run = start_producer(stack, "--seconds", "20", "--realtime")

        def status() -> str:
            return stack("run", "--rm", "-T", "--no-deps", "producer", "ocycle-dist", "status", "--broker", BROKER,
                         timeout=120).stdout  # fmt: skip

        seen: list[str] = []

        def model_waits() -> bool:
            seen[:] = [status()]
            m = re.search(r"'model': (\d+) messages waiting, oldest waiting ([\d.]+) s; NO running worker", seen[0])
            return m is not None and int(m[1]) >= 2 and float(m[2]) >= 1.0

        wait_until(model_waits, 60, "status shows the model backlog")
        producer = stack.containers("producer", oneoff=True)
        assert len(producer) == 1, producer
        host = sh("docker", "exec", producer[0], "hostname").stdout.strip()
        scraped = scrape(producer[0], PRODUCER_METRICS)
        assert metric(scraped, "ocycle_done_chunks_total", stream=f"{host}-spl") >= 1
        assert metric(scraped, "ocycle_in_flight", stream=f"{host}-classify") >= 2  # the model's backlog
        for queue in ("spl", "archive", "celery"):
            assert re.search(rf"queue '{queue}': \d+ messages waiting, oldest waiting [\d.]+ s; 3 worker\(s\)", seen[0])
        figure("status with worker-model stopped: " + next(x for x in seen[0].splitlines() if "'model'" in x))
    finally:
        stack("start", "worker-model", timeout=120)
    code = run.finish(180)
    summary, _ = assert_every_chunk_done_once(run, expired_ok=("classify",))
    assert code == (3 if summary["classify"]["expired"] else 0), run.text()  # 3: no failure, some chunks expired
    figure(f"backlog run: classify {summary['classify']['done']} done + {summary['classify']['expired']} expired of"
           f" {summary['classify']['chunks']} (its chunks expire after 6 s)")  # fmt: skip


# one line per recovery (or per second and reason)
RESENT = re.compile(r"(\d+) chunk\(s\) sent again \(([^)]*(?:\([^)]*\))?[^)]*)\)(?: in the last \S+ s)?: (.*)$")
SPANS = re.compile(r"\S+-(\w+)#([\d,-]+)")  # <producer>-<consumer>#4-9,12


def test_worker_killed_mid_stream_every_chunk_done_once(stack: Compose, first_run: tuple[Run, dict[str, str]]) -> None:
    """A worker container SIGKILLed while it works through a backlog (4 min of audio as fast as taken): the chunks
    it held (prefetched, running) are sent again by the producer when its lease lapses; every chunk done once.

    So that the victim surely holds chunks at the kill (the whole backlog takes the three workers ~3 s), the
    other two ``worker`` containers are frozen (``docker pause``) until the kill: the victim alone takes the
    spl and archive messages."""
    before = first_run[1]
    victim, *others = stack.containers("worker")
    sh("docker", "pause", *others)
    try:
        run = start_producer(stack, "--seconds", "240")
        run.wait_for(lambda: done_count(run, "spl") >= 30, 180)
        sh("docker", "kill", victim)
        killed_at = time.monotonic()
    finally:
        sh("docker", "unpause", *others)
    done_at_kill = sum(1 for r in run.results() if r[0] <= killed_at)
    assert done_at_kill < 480 + 120 + 24, "the stream had ended before the kill"
    assert run.finish(300) == 0, run.text()
    summary, _ = assert_every_chunk_done_once(run)
    resent = {(consumer, seq): at for at, line in run.lines if (m := RESENT.search(line)) and at > killed_at
              for consumer, spans in SPANS.findall(m[3]) for seq in seqs_of(spans)}  # fmt: skip
    assert resent, f"the victim held nothing the producer had to send again:\n{run.text()}"
    came = {(r[1], r[2]): r[0] for r in run.results()}
    noticed = min(resent.values()) - killed_at
    recovered = max(came[key] for key in resent) - killed_at
    assert recovered < 15, f"the victim's chunks were done {recovered:.1f} s after the kill"
    figure(f"worker killed mid-stream ({victim}; 4 min of audio as fast as taken): " + ", ".join(
        f"{k} {v['done']}/{v['chunks']} done once" for k, v in summary.items())
        + f"; the {len(resent)} chunks it held were sent again {noticed:.1f} s after the kill and all done"
        f" {recovered:.1f} s after it")  # fmt: skip
    after = archive_digests(stack)
    assert {name: after.get(name) for name in before} == before, "a later run changed the first run's archive files"
    assert len(after) >= len(before) + 24
    figure(f"archive: the first run's {len(before)} FLAC files unchanged after later runs ({len(after)} files now)")


# ---- the HA stack: docker-compose.yml + docker-compose.ha.yml ----------------------------------------------------


@pytest.fixture(scope="module")
def ha_stack(compose_command: list[str], images: str, stack: Compose) -> Iterator[Compose]:
    started = time.monotonic()
    stack.down()  # one stack at a time on this machine
    figure(f"stack torn down in {time.monotonic() - started:.1f} s")
    env = {"REDIS_PASSWORD": PASSWORD, "FLOWER_PORT": str(_free_port()), **ARCHIVE_ENV}
    ha = Compose(compose_command, "ocycledeployha", ("docker-compose.yml", "docker-compose.ha.yml"), env)
    ha.down()
    started = time.monotonic()
    try:
        ha("up", "-d", "--scale", "worker=2", "redis", "redis-replica", "sentinel1", "sentinel2", "sentinel3",
           "worker", "worker-model", timeout=600)  # fmt: skip
        figure(f"HA stack up (2 redis, 3 sentinels, 2 worker, 1 worker-model) in {time.monotonic() - started:.1f} s")
        yield ha
    finally:
        started = time.monotonic()
        ha.down()
        figure(f"HA stack torn down in {time.monotonic() - started:.1f} s")


def _master(ha: Compose) -> str:
    proc = sh("docker", "exec", ha.containers("sentinel1")[0], "redis-cli", "-p", "26379", "sentinel",
              "get-master-addr-by-name", "mymaster", check=False, timeout=30)  # fmt: skip
    return proc.stdout.split("\n")[0].strip()


def test_ha_primary_killed_fails_over_within_10_s(ha_stack: Compose) -> None:
    assert _master(ha_stack) == "redis"
    run = start_producer(ha_stack, "--seconds", "40", "--realtime", broker=SENTINELS)
    run.wait_for(lambda: done_count(run, "spl") >= 16, 120)
    sh("docker", "kill", ha_stack.containers("redis")[0])
    failover = wait_until(lambda: _master(ha_stack) == "redis-replica", 60, "the sentinels promote redis-replica")
    killed_at = time.monotonic() - failover
    assert failover < 10, f"failover took {failover:.1f} s"
    assert run.finish(300) == 0, run.text()
    # every chunk done or expired (counted), none failed; a result reported twice is counted and printed (the
    # producer's on_done ran twice for that chunk): exactly once is asserted for a worker killed, not here
    summary, twice = assert_every_chunk_done_once(run, expired_ok=("classify",), once=False)
    first_after = min((at - killed_at for at, *_ in run.results() if at > killed_at + failover), default=float("nan"))
    figure(f"HA: primary killed, redis-replica promoted in {failover:.1f} s; " + ", ".join(
        f"{k} {v['done']} done + {v['expired']} expired of {v['chunks']}" for k, v in summary.items())
        + f"; first result {first_after:.1f} s after the kill; results reported twice: {twice or 'none'}")  # fmt: skip
