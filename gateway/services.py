"""The shared services every listener reaches through one typed app key.

Built and torn down by `app.py`; handlers only read from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.driver import Driver
from gateway.limits import Limits
from gateway.routes import RouteTable
from gateway.scheduler import Scheduler
from gateway.store import FullStore
from gateway.store.writer import Writer
from gateway.tokens import Tokens


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
    ready: bool = False
    """True once all three listeners are bound."""


SERVICES = web.AppKey("services", Services)
