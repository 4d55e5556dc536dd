"""Builds the three listeners around the shared services, runs them, shuts down in phases.

Shutdown order matters: stop taking connections, let in-flight attempts finish (they
still need the sidecar), answer held clients with their result URL, flush the writer,
then close the store and the upstream session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from gateway import logs, metrics, upstream
from gateway.config import GatewayConfig, TracingConfig, local_url
from gateway.config.storage_url import shown_url
from gateway.engine import recovery, retention
from gateway.engine.breaker import Breakers
from gateway.engine.budget import Budgets
from gateway.engine.credentials import Credentials
from gateway.engine.driver import Driver, new_owner
from gateway.engine.leases import Leases
from gateway.engine.limits import Limits
from gateway.engine.runner import Runner
from gateway.engine.scheduler import Scheduler
from gateway.engine.span_pipe import SpanPipe
from gateway.engine.spans import Spans
from gateway.engine.tokens import Tokens, new_secret
from gateway.engine.view import RunView
from gateway.errors import ConfigError, StoreUnavailable
from gateway.http import admin, connections, dashboard, ingress, proxy, runs_api, sidecar
from gateway.http.problems import problems_middleware
from gateway.http.routes import RouteTable
from gateway.http.services import SERVICES, Services
from gateway.store.open import open_store
from gateway.store.writer import Writer
from gateway.tasks import spawn

log = logging.getLogger("gateway")


def default_sidecar_url(config: GatewayConfig) -> str:
    return config.server.sidecar_url or local_url(config.server.sidecar)


async def build_services(config: GatewayConfig) -> Services:
    store = await open_store(config.storage.url, pool=config.storage.pool)
    security = config.security
    secret = security.secret or await store.set_meta_if_absent("secret", new_secret())
    if security.secret is None:
        log.info(
            "security.secret is not set: using the one kept in the store (set it in production)"
        )
    tokens = Tokens.from_text(secret, security.previous_secrets)
    credentials = Credentials.from_text(
        secret, security.previous_secrets, security.sensitive_headers
    )
    writer = Writer(store)
    writer.on_commit = metrics.observe_commit
    writer.start()
    session = proxy.new_session()
    pool = upstream.Pool()
    limits = Limits(config.routes)
    runner = Runner(
        store=store,
        writer=writer,
        pool=pool,
        tokens=tokens,
        sidecar_url=default_sidecar_url(config),
        limits=limits,
        budgets=Budgets(config.routes),
        breakers=Breakers(config.routes),
        spans=_spans(config.tracing),
    )
    driver = Driver(
        runner=runner,
        credentials=credentials,
        sync_steps=config.storage.durability == "sync",
        routes=config.routes,
        owner=new_owner(config.cluster.node_id),
        lease=config.cluster.lease,
    )
    leases = Leases(driver)
    if not store.exclusive:  # alone on its store, a process owns whatever it drives
        runner.fence = leases.hold
    scheduler = Scheduler(store, driver)
    writer.on_rejected = driver.store_refused
    logs.find_traces(driver.registry.trace_id)
    return Services(
        config=config,
        store=store,
        writer=writer,
        driver=driver,
        tokens=tokens,
        routes=RouteTable(config.routes),
        limits=limits,
        session=session,
        scheduler=scheduler,
        view=RunView(driver, store),
        leases=leases,
    )


def _spans(config: TracingConfig) -> Spans:
    """The spans of runs, exported over OTLP when `tracing:` names a collector."""
    if not config.enabled:
        return Spans(None)
    return Spans(SpanPipe(config), config.sample_ratio)


def build_apps(
    services: Services, budget: connections.Budget
) -> tuple[web.Server, web.Server, web.Application]:
    """The ingress's and the sidecar's low-level servers, and the admin application."""
    server = services.config.server
    ingress_server = connections.Server(
        ingress.listener(services),
        policy=connections.Policy.of("ingress", server),
        budget=budget,
        access_log=None,
    )
    sidecar_server = connections.Server(
        sidecar.listener(services),
        policy=connections.Policy.of("sidecar", server),
        budget=budget,
        access_log=None,
    )
    admin_app = admin_application()
    admin_app[SERVICES] = services
    return ingress_server, sidecar_server, admin_app


def admin_application() -> web.Application:
    """The admin listener's routes and middlewares, before its services are set; its
    OpenAPI document is checked against these routes."""
    admin_app = web.Application(middlewares=[problems_middleware, admin.admin_auth])
    admin_app.add_routes(admin.routes())
    admin_app.add_routes(runs_api.routes())
    admin_app.add_routes(dashboard.routes())
    return admin_app


async def serve(
    config: GatewayConfig, stop: asyncio.Event | None = None, hangup: asyncio.Event | None = None
) -> None:
    """Run the gateway until SIGTERM/SIGINT (or `stop` is set), then shut down in phases.

    SIGHUP reloads the configuration file (`Services.reload`); one that came while
    starting (`hangup` set, here or by the caller before the loop ran) once the
    services exist.
    """
    stop = stop or asyncio.Event()
    hangup = hangup or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    budget = connections.raise_fd_limit(3, config.server.max_connections)
    services = await build_services(config)
    loop.add_signal_handler(signal.SIGHUP, _reload_on_signal, services, stop)
    if hangup.is_set():
        _reload_on_signal(services, stop)
    ingress_server, sidecar_server, admin_app = build_apps(services, budget)
    grace = config.server.shutdown_grace
    planned: list[web.BaseRunner] = [
        web.ServerRunner(ingress_server, handle_signals=False, shutdown_timeout=grace),
        web.ServerRunner(sidecar_server, handle_signals=False, shutdown_timeout=grace),
        connections.AppRunner(
            admin_app,
            policy=connections.Policy.of("admin", config.server),
            budget=budget,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=grace,
        ),
    ]
    addresses = (config.server.ingress, config.server.sidecar, config.server.admin)
    runners: list[web.BaseRunner] = []
    background: list[asyncio.Task[None]] = []
    try:
        for runner, name, (host, port) in zip(planned, LISTENERS, addresses, strict=True):
            await runner.setup()
            runners.append(runner)
            await _bind(runner, name, host, port)
        await services.leases.join()
        services.ready = True
        if (sink := services.driver.runner.spans.sink) is not None:
            sink.start()  # before recovery, which reports the attempts a stop cut off
        await recovery.recover(services.driver)
        background += [
            spawn(services.scheduler.run_forever(), name="scheduler"),
            spawn(services.leases.renew_forever(), name="lease-renewer"),
            spawn(
                retention.purge_forever(services.store, config.storage.retention),
                name="retention",
            ),
        ]
        if not services.store.exclusive:
            background.append(spawn(services.leases.take_over_forever(), name="take-over"))
        log.info(
            "listening ingress=%s:%d sidecar=%s:%d admin=%s:%d store=%s durability=%s node=%s",
            *addresses[0],
            *addresses[1],
            *addresses[2],
            shown_url(config.storage.url),
            config.storage.durability,
            services.driver.owner,
        )
        await stop.wait()
        log.info("shutting down (grace %.1fs)", config.server.shutdown_grace)
    finally:
        for task in background:
            task.cancel()
        await _shutdown(services, runners)


LISTENERS = ("ingress", "sidecar", "admin")


async def _bind(runner: web.BaseRunner, name: str, host: str, port: int) -> None:
    """Start a listener; an address that cannot be bound says which listener's it is."""
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        # Both loops say "error while attempting to bind on address (…): <why>".
        why = (exc.strerror or str(exc)).rpartition("): ")[2]
        raise OSError(f"server.{name} {host}:{port}: {why}") from None


def _reload_on_signal(services: Services, stop: asyncio.Event) -> None:
    """SIGHUP: reload the configuration file in a task of its own (serialised there)."""
    if stop.is_set():
        log.warning("SIGHUP ignored: the gateway is shutting down")
        return
    log.info("SIGHUP: reloading %s", services.config.source)
    spawn(_reload(services), name="reload")


async def _reload(services: Services) -> None:
    with contextlib.suppress(ConfigError):  # logged by `reload`: the old config serves on
        await services.reload()


async def _shutdown(services: Services, runners: list[web.BaseRunner]) -> None:
    services.ready = False
    if runners:
        for site in list(runners[0].sites):
            await site.stop()  # phase 1: no new client connections
    await services.driver.close(services.config.server.shutdown_grace)  # phase 2: drain
    for runner in runners:  # phase 3: listeners
        await runner.cleanup()
    await services.writer.close(timeout=services.config.server.shutdown_grace)  # phase 4
    with contextlib.suppress(StoreUnavailable):  # the next start (or node) takes over at once
        await services.store.release_leases(services.driver.owner)
    with contextlib.suppress(StoreUnavailable):
        await services.store.cluster.leave()
    await services.session.close()
    await services.driver.runner.pool.close()
    await services.store.close()
    sink = services.driver.runner.spans.sink
    if sink is not None:  # the spans of the runs that just ended
        await sink.close()
    log.info("stopped")
