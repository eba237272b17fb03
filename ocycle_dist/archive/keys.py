"""age keys: the recipients the workers encrypt to (public keys only) and the identities that decrypt (the owner's).

Recipients are X25519 public keys (``age1...``), given as ``OCYCLE_ARCHIVE_RECIPIENTS``: comma-separated keys, or
the path of a recipients file (age's format: one key per line, ``#`` comments). Identities are age identity files
(``AGE-SECRET-KEY-1...`` lines, as ``age-keygen`` writes them). :func:`ensure_identity` makes one for the demo,
readable by its owner only (mode 0600).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError

RECIPIENTS_SETTING = "OCYCLE_ARCHIVE_RECIPIENTS"
PLAINTEXT_SETTING = "OCYCLE_ARCHIVE_PLAINTEXT"
PUBLIC_PREFIX = "age1"
SECRET_PREFIX = "AGE-SECRET-KEY-1"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def pyrage() -> Any:
    """The ``pyrage`` module (age in Rust), or a ConfigError saying how to install it."""
    try:
        import pyrage as module
    except ImportError:
        raise ConfigError(
            "pyrage", "not installed", "the age library of the archive: pip install 'ocycle-dist[audio]'"
        ) from None
    return module


def parse_recipients(value: str, setting: str = RECIPIENTS_SETTING) -> list[str]:
    """The public keys of ``value``: ``age1...`` keys separated by commas, or the path of a recipients file.

    Raises:
        ConfigError: naming ``setting``: no key, a key that is not an X25519 public key (a secret key is named
            as such and not shown), a file that cannot be read.
    """
    text = value.strip()
    if not text:
        raise ConfigError(setting, value, "age public keys (age1..., comma-separated) or a recipients file's path")
    if any(part.strip().upper().startswith(SECRET_PREFIX) for part in text.split(",")):
        raise ConfigError(setting, "<a secret key, not shown>", "public keys only (age-keygen -y IDENTITY prints it)")
    if text.startswith(PUBLIC_PREFIX) and "/" not in text:
        keys = [k.strip() for k in text.split(",") if k.strip()]
        where = ""
    else:
        try:
            lines = Path(text).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(
                setting, value, f"age1... public keys or a readable recipients file ({exc.strerror or exc})"
            ) from None
        keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        where = f" in {text}"
        if any(SECRET_PREFIX in k.upper() for k in keys):
            raise ConfigError(setting, value, "a recipients file of public keys; it holds a secret key")
    if not keys:
        raise ConfigError(setting, value, f"at least one age public key (age1...){where}")
    x25519 = pyrage().x25519
    for key in keys:
        try:
            x25519.Recipient.from_str(key)
        except Exception:
            raise ConfigError(setting, value, f"X25519 public keys (age1...){where}; {key!r} is not one") from None
    return keys


def recipients(keys: Sequence[str]) -> list[Any]:
    """pyrage recipient objects of checked keys (:func:`parse_recipients`)."""
    return list(_recipients(tuple(keys)))


@lru_cache(maxsize=16)
def _recipients(keys: tuple[str, ...]) -> tuple[Any, ...]:
    x25519 = pyrage().x25519
    return tuple(x25519.Recipient.from_str(k) for k in keys)


def plaintext_allowed(value: str, setting: str = PLAINTEXT_SETTING) -> bool:
    """Whether ``OCYCLE_ARCHIVE_PLAINTEXT`` asks for unencrypted archives (``1``/``true``/``yes``/``on``)."""
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(setting, value, "1 (archive unencrypted FLAC) or 0 / empty (encrypt: the default)")


def archive_keys(recipients_value: str, plaintext_value: str) -> list[str] | None:
    """The recipients to encrypt to, or None when unencrypted archives were asked for explicitly.

    Read once per value (a recipients file: again when it changes), as the archive task asks for every chunk.

    Raises:
        ConfigError: naming the setting: neither given (so nothing is written unencrypted by default), both
            given, or either invalid.
    """
    found = _archive_keys(recipients_value, plaintext_value, _stamp(recipients_value))
    return None if found is None else list(found)


def _stamp(value: str) -> tuple[int, int, int] | None:
    """A recipients file's identity and version (inode, size, mtime), so that a changed file is read again."""
    try:
        st = os.stat(value.strip())
    except (OSError, ValueError):
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@lru_cache(maxsize=16)
def _archive_keys(recipients_value: str, plaintext_value: str, stamp: object) -> tuple[str, ...] | None:
    plain = plaintext_allowed(plaintext_value)
    if recipients_value.strip():
        if plain:
            raise ConfigError(
                PLAINTEXT_SETTING, plaintext_value, f"unset, or {RECIPIENTS_SETTING} unset: not both (which one?)"
            )
        return tuple(parse_recipients(recipients_value))
    if plain:
        return None
    raise ConfigError(
        RECIPIENTS_SETTING,
        recipients_value,
        "age public keys (age1..., comma-separated) or a recipients file's path, to encrypt the archive to;"
        f" or {PLAINTEXT_SETTING}=1 to write it unencrypted",
    )


def read_identities(path: str | os.PathLike[str], param: str = "identity") -> list[Any]:
    """pyrage identities from an age identity file (``AGE-SECRET-KEY-1...`` lines; ``#`` comments).

    Raises:
        ConfigError: naming ``param`` and the path (never the key): unreadable, no identity, not one.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(param, str(path), f"a readable age identity file ({reason})") from None
    x25519 = pyrage().x25519
    found = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(PUBLIC_PREFIX):
            raise ConfigError(param, str(path), f"a secret key (AGE-SECRET-KEY-1...); line {number} is a public key")
        try:
            found.append(x25519.Identity.from_str(line))
        except Exception:
            raise ConfigError(param, str(path), f"AGE-SECRET-KEY-1... lines; line {number} is not one") from None
    if not found:
        raise ConfigError(param, str(path), "an age identity file with an AGE-SECRET-KEY-1... line")
    return found


def default_identity_path() -> Path:
    """Where the demo keeps the identity it makes: ``$XDG_CONFIG_HOME/ocycle-dist/archive-identity.txt``
    (``~/.config/...`` by default)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "ocycle-dist" / "archive-identity.txt"


def ensure_identity(path: Path | None = None) -> tuple[Path, str, bool]:
    """The identity at ``path`` (default :func:`default_identity_path`), made if missing (mode 0600).

    Returns:
        ``(path, public key, made now)``.
    """
    path = path or default_identity_path()
    if path.exists():
        identity = read_identities(path)[0]
        return path, str(identity.to_public()), False
    identity = pyrage().x25519.Identity.generate()
    public = str(identity.to_public())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = f"# created: {created}\n# public key: {public}\n{identity}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path, public, True


def too_open(path: Path) -> bool:
    """Whether an identity file can be read by others than its owner (group or other bits set)."""
    return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def embedded_archive_env(say: Callable[[str], None], archive_dir: str | None = None) -> dict[str, str]:
    """For the worker that ``demo`` and ``stream`` start themselves: with neither ``OCYCLE_ARCHIVE_RECIPIENTS`` nor
    ``OCYCLE_ARCHIVE_PLAINTEXT`` set, the archive is encrypted to the user's own identity, made now if missing
    (:func:`ensure_identity`); where it is and how to decrypt are said. Returns the worker's extra environment."""
    if os.environ.get(RECIPIENTS_SETTING, "").strip() or os.environ.get(PLAINTEXT_SETTING, "").strip():
        return {}
    path, public, made = ensure_identity()
    folder = archive_dir or os.environ.get("OCYCLE_ARCHIVE_DIR") or "archive"
    say(
        f"archive: no {RECIPIENTS_SETTING} given: encrypting to your identity {path}"
        + (" (made now, mode 0600: keep it, only it decrypts the archive)" if made else "")
        + (" WARNING: others can read it (chmod 600 it)" if too_open(path) else "")
    )
    say(f"archive: recipient {public}; files in {folder}/, read them back with:")
    say(f"  age -d -i {path} {folder}/FILE.flac.age > FILE.flac")
    say(f"  ocycle-dist archive list --dir {folder}; ocycle-dist archive export -i {path} --dir {folder} OUT.wav")
    return {RECIPIENTS_SETTING: public}
