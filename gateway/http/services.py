"""The shared services every listener reaches through one typed app key.

Built and torn down by `app.py`; handlers only read from it. A configuration reload is
the one change made to it in place (`Services.apply`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.config.loader import load_config
from gateway.config.reload import Reload, plan
from gateway.engine.driver import Driver
from gateway.engine.leases import Leases
from gateway.engine.limits import Limits
from gateway.engine.scheduler import Scheduler
from gateway.engine.tokens import Tokens
from gateway.engine.view import RunView
from gateway.errors import ConfigError
from gateway.http.routes import RouteTable
from gateway.store import FullStore
from gateway.store.writer import Writer

log = logging.getLogger("gateway")


@dataclass(slots=True)
class Services:
    config: GatewayConfig
    store: FullStore
    writer: Writer
    driver: Driver
    tokens: Tokens
    routes: RouteTable
    limits: Limits
    session: aiohttp.ClientSession
    scheduler: Scheduler
    view: RunView
    """Every read of a run, live or stored, goes through here."""
    leases: Leases
    """This node's hold on its runs; the sidecar confirms it before acknowledging."""
    ready: bool = False
    """True once all three listeners are bound."""
    reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Serialises reloads (SIGHUP, `POST /v1/admin/reload`); each reads the file anew."""

    async def reload(self) -> Reload:
        """Read the file the gateway started with again, with the same loader, and put it
        in force. A file the loader refuses leaves the config in force and raises its
        ConfigError. Logs either outcome, and what the file changes that needs a restart.
        """
        async with self.reloading:
            source = self.config.source
            try:
                config = await asyncio.to_thread(load_config, source)
            except ConfigError as err:
                log.error("reload refused, the configuration in force is kept: %s", err)
                raise
            done = self.apply(config)
        log.info("reloaded %s: %s", source, done.describe())
        if done.needs_restart:
            changed = ", ".join(done.needs_restart)
            log.warning("%s changes %s: kept as started until a restart", source, changed)
        return done

    def apply(self, config: GatewayConfig) -> Reload:
        """Put a reloaded config in force: the one place a reload swaps anything.

        Synchronous, so a request sees the old routes or the new ones, never a mix; one
        already matched goes on under the route it matched. Whatever is kept per route
        across reloads (limiters, retry budgets, circuit breakers) is rebuilt here from
        what is in force.
        """
        done = plan(self.config, config)
        new = done.config
        self.limits = Limits(new.routes, previous=self.limits)
        self.driver.runner.limits = self.limits
        self.driver.runner.gate.budgets.apply(new.routes)
        self.driver.runner.gate.breakers.apply(new.routes)
        self.driver.reroute(new.routes)
        self.routes = RouteTable(new.routes)
        self.config = new
        return done


SERVICES = web.AppKey("services", Services)
