"""Where the fal key may go: only to the configured queue and storage hosts, only over https.

An origin is scheme + host + port. The key is attached to a URL only when its origin equals the
configured one's; a status, result or cancel URL that a server names on any other origin is
refused, so a hostile or misconfigured answer cannot collect the key. Plain http is accepted only
for a server on this machine (the tests' stub), never across a network.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple
from urllib.parse import urlsplit

from .errors import FalError
from .redact import excerpt

DEFAULT_PORTS = {"http": 80, "https": 443}


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin | None:
        """The origin of an http(s) URL, or None when `url` is not one."""
        try:
            parts = urlsplit(url)
            scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
            port = parts.port or DEFAULT_PORTS.get(scheme)
        except ValueError:  # a port that is not a number, an unbalanced "[" ...
            return None
        if scheme not in DEFAULT_PORTS or not host or port is None:
            return None
        return cls(scheme, host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}"

    @property
    def secure(self) -> bool:
        """https, or plain http to this machine (a local test server)."""
        return self.scheme == "https" or is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configured_origin(url: str, setting: str) -> Origin:
    """The origin of a configured fal URL (`setting` names where it came from), refusing plain http."""
    origin = Origin.of(url)
    if origin is None:
        raise FalError(f"{setting}={url!r} is not an http(s) URL such as https://queue.fal.run. "
                       f"Fix it, or unset {setting} to use fal's own host.")
    if not origin.secure:
        raise FalError(f"{setting}={url!r} is plain http: the fal key would cross the network unencrypted. "
                       f"Use https (plain http is accepted only for a test server on this machine, such as "
                       f"http://127.0.0.1:8000), or unset {setting} to use fal's own host.")
    return origin


def check_same_origin(url: str, allowed: Origin, *, what: str, key: str | None) -> None:
    """Refuse to send the key to `url` unless it is on `allowed` (the configured fal host)."""
    origin = Origin.of(url)
    if origin != allowed:
        where = excerpt(str(origin) if origin else url, key, 120)
        raise FalError(f"fal's answer named {what} on {where}, not on the configured {allowed}; the fal key "
                       f"is only sent to {allowed}, so nothing was sent there. If FAL_QUEUE_URL points at a "
                       "proxy, point it at fal itself (or unset it); otherwise try again.")


def check_public_url(url: str, *, what: str, key: str | None) -> None:
    """A URL fal names for data without the key (a signed upload, a result file): https, or a local http server."""
    origin = Origin.of(url)
    if origin is None or not origin.secure:
        shown = excerpt(url, key, 120)
        raise FalError(f"fal's answer named {what} at {shown!r}, which is not an https URL; refused. "
                       "Try again; if it persists, fal's API may have changed.")
