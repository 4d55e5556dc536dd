"""The shared services every listener reaches through one typed app key.

Built and torn down by `app.py`; handlers only read from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.engine.driver import Driver
from gateway.engine.leases import Leases
from gateway.engine.limits import Limits
from gateway.engine.scheduler import Scheduler
from gateway.engine.tokens import Tokens
from gateway.engine.view import RunView
from gateway.http.routes import RouteTable
from gateway.store import FullStore
from gateway.store.writer import Writer


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


SERVICES = web.AppKey("services", Services)
