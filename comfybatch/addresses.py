"""Which hosts the platform may connect to on a user's behalf: one rule (no SSRF) for fetched inputs and webhooks.

A name resolves to public addresses only, unless the operator allows internal ones; the caller then connects to
the address checked here, so a second DNS answer cannot point inside (rebinding).
"""

import asyncio
import ipaddress
import socket

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_of(text: str) -> IpAddress:
    """The address `getaddrinfo` answered, as the rule sees it: no IPv6 scope id, IPv4-mapped unwrapped
    (`::ffff:127.0.0.1` is loopback)."""
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address `host` resolves to now.

    Raises:
        socket.gaierror, UnicodeError: the name does not resolve.
    """
    return [ip_of(str(info[4][0])) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


async def aresolve(host: str, port: int) -> list[IpAddress]:
    """`resolve` without blocking the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [ip_of(str(info[4][0])) for info in infos]


def internal(addresses: list[IpAddress]) -> IpAddress | None:
    """The first loopback, private, link-local or other non-public address among `addresses`, if any."""
    return next((address for address in addresses if not address.is_global), None)
