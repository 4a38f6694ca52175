"""The router's HTTP application (Starlette, served by uvicorn, the stack vLLM serves on).

Routes: POST /v1/completions and /v1/chat/completions (the proxy), GET /v1/models (the
first engine that is up answers), GET /metrics (Prometheus text of the router's registry)
and GET /healthz (200 when the traffic controller answers and at least one prefill and one
decode engine are up and in service there; 503 naming what is missing; the JSON body details
every engine).

`Runtime` owns everything with a lifetime (threads, channels, HTTP pools, monitor tasks):
created when the app starts, closed when it stops. Blocking gRPC calls (the controller
client behind EngineReporter, the agents' Lookup and Stat) run on its own thread pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_controller.client import AsyncControllerSession, ControllerClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dualpath_router.config import RouterConfig
from dualpath_router.engines import EnginePool
from dualpath_router.engines_file import EnginesFileWatcher
from dualpath_router.errors import RouterError
from dualpath_router.metrics import RouterMetrics
from dualpath_router.openai_models import Endpoint
from dualpath_router.prefix import PrefixLookup
from dualpath_router.proxy import Proxy, error_response

log = logging.getLogger("dualpath.router")
HEALTH_TIMEOUT_S = 2.0
IO_THREADS = 32


class Runtime:
    """The router's live parts; `start` and `close` run on the server's event loop."""

    def __init__(self, config: RouterConfig, metrics: RouterMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or RouterMetrics()
        self._proxy: Proxy | None = None
        self._watch: asyncio.Task[None] | None = None
        self.watcher: EnginesFileWatcher | None = None

    @property
    def proxy(self) -> Proxy:
        assert self._proxy is not None, "the router has not started"
        return self._proxy

    async def start(self) -> None:
        config = self.config
        self.executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="router-io")
        tls_ca = config.controller_tls_ca
        identity = config.identity()
        self.controller = ControllerClient(
            config.controller,
            timeout_s=config.controller_timeout_s,
            tls_ca=tls_ca,
            identity=identity,
        )
        self.session = AsyncControllerSession(
            config.controller,
            timeout_s=config.controller_timeout_s,
            tls_ca=tls_ca,
            identity=identity,
        )
        self.pool = EnginePool(
            config, self.controller, self.executor, self.metrics, identity=identity
        )
        self.prefix = PrefixLookup(
            [e.agent for e in config.prefill_engines],
            config.block_tokens,
            config.hash_namespace,
            self.executor,
            self.metrics,
            config.agent_timeout_s,
            identity=identity,
        )
        self._proxy = Proxy(config, self.pool, self.session, self.prefix, self.metrics)
        self.pool.start()
        if config.engines_file is not None:
            self.watcher = watcher = EnginesFileWatcher(
                config.engines_file,
                config.fixed_engines,
                self.pool,
                self.prefix,
                self.metrics,
                config.engines_file_poll_s,
            )
            self._watch = asyncio.create_task(watcher.run(), name="engines-file")
        log.info(
            "router started",
            extra={
                "controller": config.controller,
                "engines": [e.id for e in config.engines],
                "block_tokens": config.block_tokens,
                "hash_namespace": config.hash_namespace,
                "identity": identity.identity.uri if identity else None,
            },
        )

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.pool.close()
        await self.proxy.drain()
        await self.session.close()
        self.controller.close()
        self.prefix.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def controller_status(self) -> pb.ClusterStatus:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor,
            lambda: self.controller.stub.GetStatus(pb.StatusRequest(), timeout=HEALTH_TIMEOUT_S),
        )

    async def health(self) -> tuple[bool, dict[str, Any]]:
        problems = []
        controller: dict[str, Any] = {"target": self.config.controller}
        registered: dict[str, pb.EngineStatus] = {}
        try:
            status = await self.controller_status()
            registered = {e.engine.engine_id: e for e in status.engines}
            controller |= {"ok": True, "policy": status.policy}
        except grpc.RpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
            controller |= {"ok": False, "problem": reason}
            problems.append(f"traffic controller {self.config.controller}: {reason}")
        engines = {}
        for engine_id, state in self.pool.states.items():
            at_controller = registered.get(engine_id)
            engines[engine_id] = {
                "role": state.spec.role,
                "url": state.spec.url,
                "up": state.up,
                "problem": state.problem,
                "registered": at_controller is not None,
                "drained": bool(at_controller and at_controller.drained),
                "report_problem": state.report_problem,
            }
        for role in ("prefill", "decode"):
            of_role = [e for e in engines.values() if e["role"] == role]
            if not any(e["up"] for e in of_role):
                problems.append(f"no {role} engine is up")
            elif controller["ok"] and not any(
                e["up"] and e["registered"] and not e["drained"] for e in of_role
            ):
                problems.append(f"no {role} engine is up and in service at the controller")
        report = {
            "status": "ok" if not problems else "unavailable",
            "problems": problems,
            "controller": controller,
            "engines": engines,
        }
        if self.watcher is not None:  # a rejected file leaves the engines as they were
            report["engines_file"] = {
                "path": str(self.watcher.path),
                "applied": not self.watcher.problem,
                "problem": self.watcher.problem,
            }
        return not problems, report


def create_app(config: RouterConfig, runtime: Runtime | None = None) -> Starlette:
    runtime = runtime or Runtime(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    async def completions(request: Request) -> Response:
        return await runtime.proxy.handle(Endpoint.COMPLETIONS, request)

    async def chat(request: Request) -> Response:
        return await runtime.proxy.handle(Endpoint.CHAT, request)

    async def models(request: Request) -> Response:
        problems = []
        for state in runtime.pool.up():
            try:
                reply = await runtime.pool.http.get(f"{state.spec.url}/v1/models")
            except httpx.HTTPError as exc:
                problems.append(f"{state.spec.id}: {type(exc).__name__}: {exc}")
                continue
            return Response(
                reply.content, reply.status_code, media_type=reply.headers.get("content-type")
            )
        return error_response(
            RouterError(
                503, "no engine answered /v1/models: " + ("; ".join(problems) or "none is up")
            )
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        ok, body = await runtime.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    app = Starlette(
        routes=[
            Route(Endpoint.COMPLETIONS.value, completions, methods=["POST"]),
            Route(Endpoint.CHAT.value, chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    return app
