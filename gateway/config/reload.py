"""What a configuration reload changes: the running config against the file's new one. Pure.

Decides which settings a running gateway takes at once and which stay as started until
a restart; never touches a listener, the store or a run (`Services.apply` does the swap).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from gateway.config.model import GatewayConfig

RESTART_SECTIONS = ("server", "storage", "cluster", "security", "tracing")
"""Sections kept as started: listeners are bound, the store is open, the node named and
the secret signs tokens already handed out. Only `security.admin_token` is reloaded."""
RELOADED_SECURITY = ("admin_token",)


@dataclass(frozen=True, slots=True)
class Reload:
    """A reload's outcome: the config now in force and what differs from the one before."""

    config: GatewayConfig
    """The file's routes, defaults and admin token; everything else as started."""
    added: tuple[str, ...] = ()
    """Route names new in the file."""
    removed: tuple[str, ...] = ()
    """Route names no longer in the file."""
    changed: tuple[str, ...] = ()
    """Routes whose match, upstream, settings or limits differ (by name)."""
    reordered: bool = False
    """The kept routes are listed in another order (it decides among equal paths)."""
    admin_token_changed: bool = False
    needs_restart: tuple[str, ...] = ()
    """Key paths the file changes that this process keeps as started."""

    @property
    def unchanged(self) -> int:
        return len(self.config.routes) - len(self.added) - len(self.changed)

    def summary(self) -> dict[str, Any]:
        """The JSON answer of `POST /v1/admin/reload`: names and key paths, no values."""
        return {
            "source": self.config.source,
            "routes": {
                "added": list(self.added),
                "removed": list(self.removed),
                "changed": list(self.changed),
                "unchanged": self.unchanged,
                "reordered": self.reordered,
            },
            "admin_token_changed": self.admin_token_changed,
            "needs_restart": list(self.needs_restart),
        }

    def describe(self) -> str:
        """One line for the log: counts, then what else took effect."""
        text = (
            f"routes: {len(self.added)} added, {len(self.removed)} removed,"
            f" {len(self.changed)} changed, {self.unchanged} unchanged"
        )
        if self.reordered:
            text += ", reordered"
        if self.admin_token_changed:
            text += "; admin token changed"
        return text


def plan(running: GatewayConfig, new: GatewayConfig) -> Reload:
    """The reload of `new` over `running`: its routes and defaults and admin token; the
    rest of `running` kept, and the key paths where `new` differs named."""
    security = replace(
        running.security, **{key: getattr(new.security, key) for key in RELOADED_SECURITY}
    )
    config = replace(
        new,
        server=running.server,
        storage=running.storage,
        cluster=running.cluster,
        tracing=running.tracing,
        security=security,
        source=running.source,
    )
    before = {route.name: route for route in running.routes}
    after = {route.name: route for route in new.routes}
    kept = [name for name in before if name in after]
    return Reload(
        config,
        added=tuple(name for name in after if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(name for name in kept if before[name] != after[name]),
        reordered=kept != [name for name in after if name in before],
        admin_token_changed=running.security.admin_token != new.security.admin_token,
        needs_restart=tuple(_restart_paths(running, new)),
    )


def _restart_paths(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    paths = []
    for section in RESTART_SECTIONS:
        old_part, new_part = getattr(running, section), getattr(new, section)
        for field in dataclasses.fields(old_part):
            if section == "security" and field.name in RELOADED_SECURITY:
                continue
            if getattr(old_part, field.name) != getattr(new_part, field.name):
                paths.append(f"{section}.{field.name}")
    return paths
