"""Whether a worker still talks to the database session its reservations were made in.

A worker's reservations belong to one database session.  When that session is lost (an
error said so, or DataJoint's automatic reconnect silently replaced it), what the worker held
must be settled before it claims again; :class:`DatabaseContact` tells when, and paces the
attempts to reach a server that is down.
"""

from __future__ import annotations

import time

from neuropipe import compat
from neuropipe.errors import backoff_seconds


class DatabaseContact:
    """Whether the worker still talks to the database session its reservations were made in.

    The session is gone when an error said so (:meth:`lose`) or when the connection's
    underlying DB-API connection was replaced, which is how DataJoint's automatic reconnect
    shows: it reconnects inside any query outside a transaction, silently.

    Parameters
    ----------
    connection : datajoint.Connection
        The worker's connection.
    cap : float
        Longest wait between attempts to reach the server.
    """

    def __init__(self, connection, cap: float):
        self.connection = connection
        self.cap = cap
        self.attempts = 0
        self.lost_since: float | None = None
        self._session = compat.driver_connection(connection)

    def lost(self) -> bool:
        """Return whether the session the worker's reservations belong to is gone."""
        return self.lost_since is not None or compat.driver_connection(self.connection) is not self._session

    def lose(self) -> float:
        """Record a failed attempt to reach the server; return how long to wait before the next."""
        self.lost_since = self.lost_since or time.monotonic()
        self.attempts += 1
        return min(self.cap, backoff_seconds(self.attempts, base=1.0, cap=self.cap))

    def alive(self) -> bool:
        """Return whether the connection answers a ping.

        (DataJoint's own ``is_connected`` does not notice a dead connection: its adapters
        report a failed ping by returning False, which it takes for success.)
        """
        return compat.ping(self.connection)

    def reach(self) -> None:
        """Make sure the connection is open, reconnecting if needed (raises while the server is down)."""
        if not self.alive():
            self.connection.connect()
        compat.set_in_transaction(self.connection, False)

    def try_reach(self) -> bool:
        """Return whether :meth:`reach` succeeded."""
        try:
            self.reach()
        except Exception:
            return False
        return True

    def restored(self) -> float:
        """Adopt the current session as the worker's; return how long the outage lasted.

        The connection's ``connection_id`` (written into the job rows it claims) is read anew.
        """
        outage = time.monotonic() - (self.lost_since or time.monotonic())
        self._session = compat.driver_connection(self.connection)
        self.connection.connection_id = compat.read_connection_id(self.connection)
        self.attempts, self.lost_since = 0, None
        return outage
