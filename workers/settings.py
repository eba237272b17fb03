"""Settings of this worker app's tasks (not of the library): where archives go, the audio's sample rate."""

from __future__ import annotations

from dataclasses import dataclass

from ocycle_dist.remote.settings import EnvSettings


@dataclass(frozen=True, kw_only=True)
class AppSettings(EnvSettings):
    """Read from ``OCYCLE_ARCHIVE_DIR``, ``OCYCLE_ARCHIVE_RECIPIENTS``, ``OCYCLE_ARCHIVE_PLAINTEXT`` and
    ``OCYCLE_SAMPLE_RATE`` (``AppSettings.from_env()``).

    Attributes:
        archive_dir: where ``workers.tasks.archive_flac`` writes its files.
        archive_recipients: the age public keys the archive is encrypted to: ``age1...`` keys, comma-separated, or
            the path of a recipients file (one key per line). Public keys only: a worker cannot read its archive.
        archive_plaintext: ``1`` to archive unencrypted FLAC, when no recipients are given. With neither, the
            archive task refuses every chunk, and a worker consuming the ``archive`` queue refuses to start.
        sample_rate: samples per second of the audio the tasks receive (the producer's ``rate``).
    """

    archive_dir: str = "archive"
    archive_recipients: str = ""
    archive_plaintext: str = ""
    sample_rate: int = 16000
