"""A thin asyncio Kubernetes REST client: exactly the calls the operator makes.

Credentials come from the `kubernetes` package's loaders (kubeconfig or in-cluster service
account, including token refresh hooks); requests go over one pooled httpx.AsyncClient.
Children are written with server-side apply (PATCH application/apply-patch+yaml, field
manager "dualpath-operator", force): the API server merges our fields with other managers'
and takes back only fields we own, so the operator never fights, e.g., an HPA or a person
adding an annotation.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import httpx

from dualpath_operator.constants import FIELD_MANAGER

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    """Where a kind lives in the REST API."""

    api_version: str  # "v1" for the core group, else "group/version"
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str = ""
    ) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        self.body = body
        try:
            parsed = json.loads(body)
            self.reason = str(parsed.get("reason", ""))
            message = str(parsed.get("message", body))
        except ValueError:
            self.reason, message = "", body
        self.message = message
        super().__init__(f"{method} {path}: HTTP {status}: {message[:500]}")


@dataclass
class Credentials:
    host: str
    ssl_context: ssl.SSLContext
    # Returns the Authorization header value (refreshing expiring tokens), or None.
    authorization: Any


def load_configuration(kubeconfig: str | None = None) -> Any:
    """A kubernetes.client.Configuration from the given kubeconfig, else KUBECONFIG (read
    now, not at import time), else ~/.kube/config, else the in-cluster service account."""
    import os

    from kubernetes import client, config

    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    if path or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_kube_config(config_file=path, client_configuration=cfg)
            return cfg
        except Exception:
            if path:
                raise
    config.load_incluster_config(client_configuration=cfg)
    return cfg


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    cfg = load_configuration(kubeconfig)
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else None
    if ctx is None:
        ctx = ssl.create_default_context()
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)

    def authorization() -> str | None:
        value = cfg.auth_settings().get("BearerToken", {}).get("value")
        return str(value) if value else None

    return Credentials(host=cfg.host.rstrip("/"), ssl_context=ctx, authorization=authorization)


class RequestOptions(TypedDict, total=False):
    """request_with_status()'s optional arguments, which request() passes on (the defaults
    are request_with_status's)."""

    body: Obj | None
    content_type: str
    params: dict[str, str] | None


class KubeClient:
    def __init__(self, credentials: Credentials, timeout: float = 30.0) -> None:
        self._creds = credentials
        self._http = httpx.AsyncClient(
            base_url=credentials.host,
            verify=credentials.ssl_context,
            timeout=timeout,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None) -> KubeClient:
        return cls(load_credentials(kubeconfig))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        **options: Unpack[RequestOptions],
    ) -> Obj:
        _, obj = await self.request_with_status(method, path, **options)
        return obj

    async def request_with_status(
        self,
        method: str,
        path: str,
        *,
        body: Obj | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> tuple[int, Obj]:
        headers = {"Accept": "application/json"}
        auth = self._creds.authorization()
        if auth:
            headers["Authorization"] = auth
        content = None
        if body is not None:
            headers["Content-Type"] = content_type
            content = json.dumps(body).encode()
        resp = await self._http.request(
            method, path, content=content, headers=headers, params=params
        )
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, method, path, resp.text)
        return resp.status_code, (dict(resp.json()) if resp.content else {})

    async def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        try:
            return await self.request("GET", rt.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, rt: ResourceType, namespace: str | None, label_selector: str = ""
    ) -> list[Obj]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", rt.path(namespace), params=params)
        return list(result.get("items", []))

    async def apply(self, rt: ResourceType, obj: Obj, force: bool = True) -> Obj:
        """Server-side apply; returns the object as stored (status included)."""
        _, stored = await self.apply_with_status(rt, obj, force)
        return stored

    async def apply_with_status(
        self, rt: ResourceType, obj: Obj, force: bool = True
    ) -> tuple[int, Obj]:
        """Server-side apply; (HTTP status: 201 created / 200 otherwise, stored object)."""
        meta = obj["metadata"]
        return await self.request_with_status(
            "PATCH",
            rt.path(meta.get("namespace"), meta["name"]),
            body=obj,
            # JSON is YAML: the apply content type takes either.
            content_type="application/apply-patch+yaml",
            params={"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"},
        )

    async def create(self, rt: ResourceType, namespace: str | None, obj: Obj) -> Obj:
        return await self.request("POST", rt.path(namespace), body=obj)

    async def replace(self, rt: ResourceType, obj: Obj) -> Obj:
        """PUT: fails with 409 when obj's resourceVersion is stale (optimistic locking)."""
        meta = obj["metadata"]
        return await self.request(
            "PUT",
            rt.path(meta.get("namespace"), meta["name"]),
            body=obj,
            params={"fieldManager": FIELD_MANAGER},
        )

    async def delete(
        self, rt: ResourceType, namespace: str | None, name: str, uid: str | None = None
    ) -> bool:
        """Delete (background propagation); False when it was already gone. With `uid`,
        only that incarnation is deleted (a precondition), never a newer object."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        body["propagationPolicy"] = "Background"
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", rt.path(namespace, name), body=body)
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def merge_patch(
        self, rt: ResourceType, namespace: str | None, name: str, patch: Obj, subresource: str = ""
    ) -> Obj:
        return await self.request(
            "PATCH",
            rt.path(namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def api_groups(self) -> Obj:
        return await self.request("GET", "/apis")

    async def group_version_resources(self, group_version: str) -> set[str]:
        try:
            doc = await self.request("GET", f"/apis/{group_version}")
        except ApiError as exc:
            if exc.status == 404:
                return set()
            raise
        return {r["name"] for r in doc.get("resources", [])}
