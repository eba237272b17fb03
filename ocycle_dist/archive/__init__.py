"""The encrypted audio archive: FLAC files encrypted to the owner's age public keys, and getting audio back.

- :mod:`.names`: file names, which carry the stream, t0, chunk number, length and a digest of the samples;
- :mod:`.keys`: recipients (public keys, for the workers) and identities (the owner's), the demo's identity;
- :mod:`.writer`: one chunk to one file: encrypted while encoded, complete under its final name, never overwritten
  (``workers.tasks.archive_flac`` calls it);
- :mod:`.catalog`: what a directory holds, from the names (``ocycle-dist archive list``);
- :mod:`.export`: a time range decrypted and joined into one file (``ocycle-dist archive export``);
- :mod:`.cli`: the ``ocycle-dist archive`` command.

age (https://age-encryption.org) is the format: any age implementation decrypts a file, e.g. Debian's ``age``:
``age -d -i IDENTITY FILE.flac.age > FILE.flac``. The workers use ``pyrage`` (the ``audio`` extra).
"""
