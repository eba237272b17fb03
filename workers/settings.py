"""Settings of this worker app's tasks (not of the library): where archives go, the audio's sample rate."""

from __future__ import annotations

from dataclasses import dataclass

from ocycle_dist.remote.settings import EnvSettings


@dataclass(frozen=True, kw_only=True)
class AppSettings(EnvSettings):
    """Read from ``OCYCLE_ARCHIVE_DIR`` and ``OCYCLE_SAMPLE_RATE`` (``AppSettings.from_env()``).

    Attributes:
        archive_dir: where ``workers.tasks.archive_flac`` writes its files.
        sample_rate: samples per second of the audio the tasks receive (the producer's ``rate``).
    """

    archive_dir: str = "archive"
    sample_rate: int = 16000
