"""The engines file, watched: `--engines-file` is read again whenever its bytes change (a
mounted ConfigMap is swapped in place by the kubelet), and the router then fronts exactly
the command line's engines plus the file's. A file that does not validate (bad YAML, a bad
field, a duplicate id, a missing file) changes nothing: it is logged naming the entry and
field, counted (`dualpath_router_engines_file_reloads_total{outcome="invalid"}`) and shown
in /healthz (`engines_file.problem`) until the file is fixed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from dualpath_router.config import (
    ConfigError,
    EngineSpec,
    check_unique_ids,
    engines_from_file,
)
from dualpath_router.engines import EnginePool
from dualpath_router.metrics import RouterMetrics
from dualpath_router.prefix import PrefixLookup

log = logging.getLogger("dualpath.router.engines_file")


class EnginesFileWatcher:
    def __init__(
        self,
        path: Path,
        fixed: tuple[EngineSpec, ...],
        pool: EnginePool,
        prefix: PrefixLookup,
        metrics: RouterMetrics,
        poll_s: float,
    ) -> None:
        self.path = path
        self.fixed = fixed
        self.pool = pool
        self.prefix = prefix
        self.metrics = metrics
        self.poll_s = poll_s
        # None: the first check applies what the file says now (a no-op when nothing
        # changed since the router read it at start).
        self._applied: bytes | None = None
        self._rejected: bytes | None = None
        # Why the file as it is now does not run (empty when it does): shown in /healthz.
        self.problem = ""

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug must not end the watching: the next change is read
                log.exception("engines file check failed", extra={"path": str(self.path)})
            await asyncio.sleep(self.poll_s)

    async def check(self) -> bool:
        """Apply the file if its bytes changed; True when the engines were changed."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            problem = f"--engines-file {self.path}: {exc}"
            self._reject(problem, problem.encode())
            return False
        if data == self._applied:
            self._rejected = None  # back to what runs: a later bad change is news again
            self.problem = ""
            return False
        if data == self._rejected:
            return False
        try:
            specs = self.fixed + engines_from_file(self.path, data.decode(errors="replace"))
            check_unique_ids(specs)
        except (ConfigError, ValueError) as exc:
            self._reject(str(exc), data)
            return False
        added, gone = await self.pool.apply(specs)
        self.prefix.set_agents([s.agent for s in specs if s.role == "prefill"])
        self._applied, self._rejected, self.problem = data, None, ""
        if added or gone:
            self.metrics.engines_file_reloads.labels("applied").inc()
            log.info(
                "engines changed",
                extra={"path": str(self.path), "added": added, "let_go": gone},
            )
        return bool(added or gone)

    def _reject(self, problem: str, seen: bytes) -> None:
        """Count and log a file (its bytes, or the read error) once, not at every poll."""
        if seen == self._rejected:
            return
        self._rejected, self.problem = seen, problem
        self.metrics.engines_file_reloads.labels("invalid").inc()
        log.warning(
            "engines file not applied: the engines stay as they were",
            extra={"path": str(self.path), "problem": problem},
        )
