"""A command sent on a connection of its own and its reply read later: Redis works on it meanwhile.

The drain (:mod:`.drain`) sends its next take before the messages of this one run.
"""

from __future__ import annotations

from typing import Any

import redis


def send_script(client: Any, sha: str, keys: list[str], args: list[Any]) -> Any:
    """Send a script (EVALSHA) on a connection of its own; its reply is read by :func:`receive`."""
    try:
        conn = client.connection_pool.get_connection()
    except TypeError:  # redis-py < 5.3 wants a command name
        conn = client.connection_pool.get_connection("EVALSHA")
    try:
        conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
    except BaseException:
        discard(client, conn)
        raise
    return conn


def receive(client: Any, conn: Any) -> Any:
    """The reply of a script sent by :func:`send_script` (None when Redis lost the script: it did not run)."""
    try:
        got = client.parse_response(conn, "EVALSHA")
    except redis.exceptions.NoScriptError:
        client.connection_pool.release(conn)
        return None
    except BaseException:
        discard(client, conn)
        raise
    client.connection_pool.release(conn)
    return got


def discard(client: Any, conn: Any) -> None:
    """Drop a connection a reply may still be on its way on."""
    conn.disconnect()
    client.connection_pool.release(conn)
