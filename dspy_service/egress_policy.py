"""Where a job may connect: the egress policy the API's SSRF checks and the job runtime's
egress proxy (deployments/runtime/egress_proxy.py) share. Standard library only.

A connection to `host:port` at an address is allowed when both hold:

- the target is one of the job's own hosts (`job_hosts`): the host of every model
  config's `base_url`, the API host of a model's provider when it has no `base_url`
  (`PROVIDER_HOSTS`), and the host of an http(s) `dataset_source`;
- every address the host resolves to passes `EgressPolicy.address_problem`: link-local
  and cloud metadata addresses (`ALWAYS_DENIED`) are always denied; loopback, private,
  shared (CGNAT), unspecified, multicast, reserved and other non-global addresses are
  denied unless `DSPY_SERVICE_EGRESS_ALLOW` lists them, by CIDR block, by address
  (`127.0.0.1:8765`) or by the name the job used (`llm.internal:8000`).

Failures: `EgressPolicy.parse` raises ValueError naming the bad entry (settings turn it
into a validation error at start). Every check returns the reason a target is denied, a
short sentence, or None; nothing here raises for a denied target. `resolve` returns []
for a name that does not resolve within its timeout: the API lets such a name pass and
leaves it to the proxy, which resolves it again when the job connects.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALWAYS_DENIED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(block)
    for block in (
        "169.254.0.0/16",  # link-local; the metadata service of AWS, GCP, Azure, OpenStack (169.254.169.254)
        "fe80::/10",  # IPv6 link-local
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "168.63.129.16/32",  # Azure wire server
        "192.0.0.192/32",  # Oracle Cloud Classic metadata
    )
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # CGNAT
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SCHEME_PORTS = {"http": 80, "https": 443}
RESOLVE_TIMEOUT_SECONDS = 3.0

# LiteLLM provider (the part of a model name before "/") -> its API host(s), for models
# without a base_url. A provider not listed needs a base_url to be reachable.
PROVIDER_HOSTS: dict[str, tuple[str, ...]] = {
    "openai": ("api.openai.com",),
    "text-completion-openai": ("api.openai.com",),
    "anthropic": ("api.anthropic.com",),
    "gemini": ("generativelanguage.googleapis.com",),
    "mistral": ("api.mistral.ai",),
    "groq": ("api.groq.com",),
    "together_ai": ("api.together.xyz", "api.together.ai"),
    "deepseek": ("api.deepseek.com",),
    "openrouter": ("openrouter.ai",),
    "cohere": ("api.cohere.ai", "api.cohere.com"),
    "cohere_chat": ("api.cohere.ai", "api.cohere.com"),
    "fireworks_ai": ("api.fireworks.ai",),
    "xai": ("api.x.ai",),
    "perplexity": ("api.perplexity.ai",),
    "deepinfra": ("api.deepinfra.com",),
    "cerebras": ("api.cerebras.ai",),
    "sambanova": ("api.sambanova.ai",),
    "nvidia_nim": ("integrate.api.nvidia.com",),
    "ai21": ("api.ai21.com",),
    "ai21_chat": ("api.ai21.com",),
    "moonshot": ("api.moonshot.ai",),
    "huggingface": ("router.huggingface.co",),
}

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOST_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def normal_host(host: str) -> str:
    """Host names compare lowercased, without a trailing dot or IPv6 brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def parse_address(text: str) -> IPAddress | None:
    """`text` as an IP address (IPv6 zone ids dropped), or None when it is a name."""
    try:
        return ipaddress.ip_address(normal_host(text).split("%", 1)[0])
    except ValueError:
        return None


def url_target(url: str) -> tuple[str, int] | None:
    """(host, port) an http(s) URL connects to; a URL without a scheme counts as http://.
    None for another scheme or no host."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url.removeprefix("//")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in SCHEME_PORTS or not parts.hostname:
        return None
    return normal_host(parts.hostname), port or SCHEME_PORTS[scheme]


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, NAT64, 6to4, Teredo), which a
    host may end up reaching."""
    if address.version == 4:
        return []
    found = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if address in NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [a for a in found if a is not None]


def _range_name(address: IPAddress) -> str | None:
    """The kind of non-public address this is, or None for a global one."""
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address in SHARED_ADDRESS_SPACE:
        return "shared (CGNAT)"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


@dataclass(frozen=True)
class AllowEntry:
    """One entry of DSPY_SERVICE_EGRESS_ALLOW: a block of addresses (a CIDR or one
    address) or a host name, optionally with one port."""

    text: str
    network: IPNetwork | None = None
    name: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        """ValueError naming `text` when it is not `host`, `host:port` or a CIDR block, or
        names only always-denied addresses."""
        entry = text.strip()
        parsed = cls._parse(entry)
        if parsed is None:
            raise ValueError(
                f"DSPY_SERVICE_EGRESS_ALLOW entry {entry!r} is not a host, host:port or CIDR block "
                "(e.g. 127.0.0.1:8765, llm.internal, 10.0.0.0/8)"
            )
        network = parsed.network
        if network is not None and any(network.version == b.version and network.subnet_of(b) for b in ALWAYS_DENIED):
            raise ValueError(
                f"DSPY_SERVICE_EGRESS_ALLOW entry {entry!r} is link-local or cloud metadata: always denied"
            )
        return parsed

    @classmethod
    def _parse(cls, entry: str) -> AllowEntry | None:
        try:
            if "/" in entry:
                return cls(entry, network=ipaddress.ip_network(entry, strict=False))
            host, port = entry, None
            if parse_address(entry) is None:  # not a bare IPv4 / IPv6 address: may end in :port
                match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", entry)
                if match:
                    host, port = match.group(1), int(match.group(2))
        except ValueError:
            return None
        if port is not None and not 0 < port < 65536:
            return None
        address = parse_address(host)
        if address is not None:
            return cls(entry, network=ipaddress.ip_network(address), port=port)
        name = normal_host(host)
        return cls(entry, name=name, port=port) if _HOST_NAME.match(name) else None

    def allows(self, host: str, port: int, address: IPAddress) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        return normal_host(host) == self.name


class EgressPolicy:
    """The address rules: what is always denied, and what the operator allow-listed."""

    def __init__(self, entries: Iterable[AllowEntry] = ()):
        self.entries = tuple(entries)

    @classmethod
    def parse(cls, value: str) -> EgressPolicy:
        """From DSPY_SERVICE_EGRESS_ALLOW (comma-separated); ValueError naming a bad entry."""
        return cls(AllowEntry.parse(part) for part in value.split(",") if part.strip())

    def __repr__(self) -> str:
        return f"EgressPolicy({','.join(entry.text for entry in self.entries)!r})"

    def address_problem(self, host: str, port: int, address: IPAddress | str) -> str | None:
        """Why connecting to `address` (reached as `host`:`port`) is denied, or None."""
        if isinstance(address, str):
            parsed = parse_address(address)
            if parsed is None:
                return f"{address!r} is not an IP address"
            address = parsed
        target = f"{host}:{port}" if normal_host(host) == str(address) else f"{host}:{port} ({address})"
        for candidate in (address, *_embedded_ipv4(address)):
            if any(candidate.version == block.version and candidate in block for block in ALWAYS_DENIED):
                return f"{target} is a link-local or cloud metadata address (always denied)"
        kinds = {kind for kind in map(_range_name, (address, *_embedded_ipv4(address))) if kind}
        if kinds and not any(entry.allows(host, port, address) for entry in self.entries):
            return (
                f"{target} is a {' and '.join(sorted(kinds))} address; the operator may allow it with "
                "DSPY_SERVICE_EGRESS_ALLOW"
            )
        return None

    def addresses_problem(self, host: str, port: int, addresses: Sequence[IPAddress | str]) -> str | None:
        """Why connecting to `host`:`port` at these (resolved) addresses is denied: the
        first denied one, or no address at all. None when every address is allowed."""
        if not addresses:
            return f"{host} does not resolve"
        for address in addresses:
            problem = self.address_problem(host, port, address)
            if problem:
                return problem
        return None

    def url_problem(self, url: str, *, resolve_timeout: float = RESOLVE_TIMEOUT_SECONDS) -> str | None:
        """The API's check of a URL a job will fetch: literal addresses and names that
        resolve to denied addresses are denied. A name that does not resolve (in time)
        passes: the proxy decides when the job connects."""
        target = url_target(url)
        if target is None:
            return f"{url!r} is not an http(s) URL with a host"
        host, port = target
        literal = parse_address(host)
        addresses = [literal] if literal is not None else resolve(host, port, resolve_timeout)
        return self.addresses_problem(host, port, addresses) if addresses else None


def resolve(host: str, port: int, timeout: float = RESOLVE_TIMEOUT_SECONDS) -> list[str]:
    """The distinct addresses `host` resolves to (TCP), in the resolver's order; [] when
    it does not resolve within `timeout` seconds. (A daemon thread per lookup: a resolver
    that hangs holds up neither the caller nor the process's exit.)"""
    found: list[list[str]] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            infos = []
        found.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))

    thread = threading.Thread(target=lookup, name="egress-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    return found[0] if found else []


@dataclass(frozen=True)
class JobHosts:
    """The (host, port) targets one job may connect to, and why a model has none."""

    targets: frozenset[tuple[str, int]]
    unknown: tuple[str, ...] = ()

    def target_problem(self, host: str, port: int) -> str | None:
        """Why `host`:`port` is not this job's to reach, or None."""
        if (normal_host(host), port) in self.targets:
            return None
        reason = f"{host}:{port} is not one of this job's hosts (its models' base_url or provider, its dataset_source)"
        return "; ".join([reason, *self.unknown])


def job_hosts(spec: Any) -> JobHosts:
    """The hosts a job (a dspy_service.schemas.JobSpec) may reach."""
    targets: set[tuple[str, int]] = set()
    unknown: list[str] = []
    for role, config in spec.lm_configs().items():
        field = spec.role_field(role)
        if config.base_url:
            target = url_target(config.base_url)
            if target is None:
                unknown.append(f"{field}.base_url {config.base_url!r} is not an http(s) URL")
            else:
                targets.add(target)
            continue
        provider = config.name.split("/", 1)[0] if "/" in config.name else ""
        hosts = PROVIDER_HOSTS.get(provider.lower())
        if hosts:
            targets.update((host, 443) for host in hosts)
        else:
            unknown.append(f"{field}: no known API host for model {config.name!r}; set its base_url")
    source = spec.dataset_source
    if source and urlsplit(source).scheme.lower() in SCHEME_PORTS:
        target = url_target(source)
        if target is not None:
            targets.add(target)
    return JobHosts(frozenset(targets), tuple(unknown))
