"""Which client address a request counts for in the per-address shares (sockets and waiting requests).

The TCP peer, unless it is a trusted proxy: then the client that proxy names. A client that is not
a trusted proxy cannot name another address, so it cannot spend someone else's share. See
docs/security.md (Client addresses).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientAddresses:
    """Which client address a connection counts for, in the per-address shares.

    The TCP peer is the client, unless it is a trusted proxy (``GATEWAY_TRUSTED_PROXIES``, loopback by
    default, as uvicorn's own proxy-header default): then the client is the right-most address of
    ``GATEWAY_CLIENT_ADDRESS_HEADER`` (X-Forwarded-For style, each proxy appends the address it was
    connected from) that is not itself a trusted proxy. Everything left of that address was written by
    the client and is ignored. A trusted proxy that names no such address (no header, only trusted
    hops, or an entry that is not an address) has no per-address share: it is one hop of the
    infrastructure, and counting every client behind it as one would throttle them all together.

    Keys: an IPv4 address as is (also when IPv4-mapped in IPv6), an IPv6 address by its /64, since
    one IPv6 client is usually given a whole /64.
    """

    MAX_HOPS = 32  # a chain longer than this names no client
    MAX_PEERS = 4096  # peers whose key is kept (``peer``)

    def __init__(self, trusted: Sequence[str], header: str) -> None:
        networks = [ipaddress.ip_network(network, strict=False) for network in trusted]
        self._trusted4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
        self._trusted6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
        self.header = header.strip().lower()
        # Peers seen lately and their answers: a connection costs a dict lookup, not an address parse. Bounded:
        # emptied when full (a client choosing many source addresses only makes us parse again).
        self._peers: dict[str, tuple[str | None, bool]] = {}

    def peer(self, host: str | None) -> tuple[str | None, bool]:
        """The key of a TCP peer (None when it is not an IP address) and whether it is a trusted proxy."""
        if not host:
            return None, False
        known = self._peers.get(host)
        if known is None:
            known = self._parse_peer(host)
            if len(self._peers) >= self.MAX_PEERS:
                self._peers.clear()
            self._peers[host] = known
        return known

    def _parse_peer(self, host: str) -> tuple[str | None, bool]:
        address = _ip(host)
        if address is None:
            return None, False
        return _key(address), self._is_trusted(address)

    def forwarded(self, value: str | None) -> str | None:
        """The client a trusted proxy names in the header's ``value`` (see the class docstring)."""
        if not value:
            return None
        hops = value.split(",")
        for entry in reversed(hops[-self.MAX_HOPS :]):
            address = _ip(entry.strip())
            if address is None:
                return None
            if not self._is_trusted(address):
                return _key(address)
        return None

    def client(self, host: str | None, forwarded: str | None) -> str | None:
        """The key of a request's client: its TCP peer, or the client its trusted proxy names."""
        key, trusted = self.peer(host)
        return self.forwarded(forwarded) if trusted else key

    def _is_trusted(self, address: Address) -> bool:
        networks = self._trusted4 if isinstance(address, ipaddress.IPv4Address) else self._trusted6
        return any(address in network for network in networks)


def _ip(text: str) -> Address | None:
    """An address as a proxy header or a peer name writes it: plain, ``v4:port``, ``[v6]`` or ``[v6]:port``."""
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _key(address: Address) -> str:
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    return str(ipaddress.IPv6Network((address, 64), strict=False))
