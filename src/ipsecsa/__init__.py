"""ipsecsa: a userspace IPsec security-association engine."""

from ipsecsa.errors import ConfigError, DropReason, IpsecsaError

__all__ = ["ConfigError", "DropReason", "IpsecsaError"]
