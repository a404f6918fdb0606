"""sipmask's own o= line (RFC 4566 §5.2) for each leg, and when its version goes up."""

from __future__ import annotations

from dataclasses import dataclass, field

from sipmask.entropy import token_bytes
from sipmask.sdp.privacy import ORIGIN_USERNAME, relay_connection


def new_session_id() -> int:
    """A fresh sess-id. RFC 4566 §5.2 only asks that it be numeric and unique; it is kept
    below 2**31 because some carrier equipment reads it into a signed 32-bit field."""
    return int.from_bytes(token_bytes(4)) % (2**31 - 2**20) + 2**20


@dataclass(slots=True)
class OriginCounter:
    """sipmask's o= line for one leg: the same sess-id for the leg's whole life, and a
    sess-version that goes up by one each time the description sent on the leg changes
    (RFC 3264 §8: "incremented by one from the previous SDP" when it differs, the same
    when it does not). The username is "-" (RFC 4566 §5.2) so no user name is shown, and
    the address is the relay's.

        counter = OriginCounter(address=relay_address, sess_id=new_session_id())
        body = scan.rewrite(scan.scan(sdp), relay_address, ports, counter)
    """

    address: str
    sess_id: int
    username: str = ORIGIN_USERNAME
    sess_version: int = -1
    _last: tuple[str, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Stacks commonly start the version at the sess-id; any start is valid (§5.2).
        if self.sess_version < 0:
            self.sess_version = self.sess_id

    def value(self) -> str:
        """The o= line's value now: <username> <sess-id> <sess-version> IN <addrtype>
        <address>."""
        return (f"{self.username} {self.sess_id} {self.sess_version} "
                f"{relay_connection(self.address)}")

    def advance(self, lines: tuple[str, ...]) -> str:
        """The o= value for a description whose every line but o= is `lines`, in the order
        held: the version goes up by one when they differ from the last description's."""
        if self._last is not None and lines != self._last:
            self.sess_version += 1
        self._last = lines
        return self.value()
