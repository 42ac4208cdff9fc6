"""The sidecar injection webhook served by the operator process: an aiohttp HTTPS server on /mutate, its
certificates, and the caBundle of the MutatingWebhookConfiguration.

Certificates are the operator's (a CA and a serving certificate in the Secret `maitred-webhook-tls` of its
namespace, made at startup or reused, renewed when certs.renewal says so) or, with a certificate directory,
cert-manager's (the mounted Secret is read again when it changes). Either way a new certificate is loaded
into the running server's SSL context: no restart. The decisions live in admission, certs and
webhook_config; this module is their I/O.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from aiohttp import web

from . import certs
from .admission import refusal_event, review
from .kube import ApiError, Kube
from .objects import MANAGED_BY
from .webhook_config import (CONFIGURATION_NAME, PATH, ca_bundle_patch, current_ca, url_client_config,
                             webhook_configuration)

log = logging.getLogger(__name__)

CONFIGURATION = ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration")
SECRET_NAME = "maitred-webhook-tls"
CHECK_INTERVAL = 600.0
"""Seconds between certificate checks (and caBundle checks): renewal starts 30 days ahead, so this is ample."""
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "maitred-system"


def operator_namespace() -> str:
    """Where the operator's own objects live: MAITRED_NAMESPACE, else the pod's namespace, else the default."""
    if os.environ.get("MAITRED_NAMESPACE"):
        return os.environ["MAITRED_NAMESPACE"]
    try:
        return NAMESPACE_FILE.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


@dataclass(frozen=True)
class WebhookOptions:
    port: int
    host: str = "0.0.0.0"
    url: str | None = None          # the operator applies the whole configuration, calling this URL
    service: str | None = None      # the webhook's Service (its DNS names go into the certificate)
    cert_dir: str | None = None     # cert-manager's certificate, mounted here (tls.crt, tls.key, ca.crt)
    namespace: str = DEFAULT_NAMESPACE
    secret: str = SECRET_NAME

    def names(self) -> list[str]:
        """The names the serving certificate is for: the Service's DNS names and the URL's host."""
        names = certs.service_names(self.service, self.namespace) if self.service else []
        host = urlsplit(self.url).hostname if self.url else None
        if host and host not in names:
            names.append(host)
        return names or ["localhost"]


def owned_by(service: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata that makes the webhook's Service the owner of its certificate's Secret: whoever removes the
    Service (`helm uninstall`) has the garbage collector remove the Secret too. No Service (--webhook-url): none."""
    if not service:
        return {}
    meta = service["metadata"]
    return {"ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": meta["name"], "uid": meta["uid"]}]}


@dataclass
class WebhookServer:
    options: WebhookOptions
    kube: Callable[[], Kube]
    image: Callable[[], str]
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)
    files: dict[str, str] = field(default_factory=dict)
    _context: ssl.SSLContext | None = None
    _runner: web.AppRunner | None = None
    _task: asyncio.Task | None = None
    _posting: set[asyncio.Task] = field(default_factory=set)
    _dir: tempfile.TemporaryDirectory | None = None

    async def start(self) -> None:
        self.files = await asyncio.to_thread(self._certificates)
        self._dir = tempfile.TemporaryDirectory(prefix="maitred-webhook-")
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._load()
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post(PATH, self._mutate)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.options.host, self.options.port, ssl_context=self._context).start()
        log.info(f"sidecar injection webhook on https://{self.options.host}:{self.options.port}{PATH} "
                 f"for {self.options.names()}")
        await asyncio.to_thread(self._configuration)
        self._task = asyncio.create_task(self._keep_current(), name="maitred webhook certificates")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._runner:
            await self._runner.cleanup()
        if self._dir:
            self._dir.cleanup()

    # -- admission ------------------------------------------------------------------------------------------

    async def _mutate(self, request: web.Request) -> web.StreamResponse:
        try:
            data = json.loads(await request.read())
        except ValueError as exc:
            return web.Response(status=400, text=f"the body is not JSON: {exc}\n")
        answer = await asyncio.to_thread(review, data, self._lookup, self.image())
        if answer.status != 200:
            log.warning(f"bad admission request from {request.remote}: {answer.body}")
            return web.Response(status=answer.status, text=f"{answer.body}\n")
        if answer.refused:
            log.info(f"{answer.refused.namespace}/{answer.refused.pod}: not injected: {answer.refused.reason}")
            task = asyncio.create_task(asyncio.to_thread(self._post, answer.refused))
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)
        return web.json_response(answer.body)

    def _lookup(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube().get_pooler(namespace, name)

    def _post(self, refused: Any) -> None:
        now = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self.kube().create(refusal_event(refused, now, MANAGED_BY))
        except Exception as exc:  # an Event is a courtesy: the answer is given already
            log.warning(f"the Event for {refused.namespace}/{refused.pod} was not posted: {exc}")

    # -- certificates and the caBundle ----------------------------------------------------------------------

    async def _keep_current(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                await self.check()
            except Exception:  # the next check tries again; the server keeps its certificate meanwhile
                log.exception("webhook certificate check failed")

    async def check(self) -> None:
        """Renew (or read again) the certificate, load a new one into the server, keep the caBundle."""
        files = await asyncio.to_thread(self._certificates)
        if files != self.files:
            self.files = files
            self._load()
            log.info(f"webhook certificate reloaded, valid until {certs.not_after(files[certs.TLS_CERT])}")
        await asyncio.to_thread(self._configuration)

    def _load(self) -> None:
        """Load the files into the SSL context: new handshakes use them, open connections keep theirs."""
        assert self._context is not None and self._dir is not None
        cert, key = Path(self._dir.name) / certs.TLS_CERT, Path(self._dir.name) / certs.TLS_KEY
        for path, text in ((cert, self.files[certs.TLS_CERT]), (key, self.files[certs.TLS_KEY])):
            path.touch(mode=0o600)
            path.write_text(text)
        self._context.load_cert_chain(cert, key)

    def _certificates(self) -> dict[str, str]:
        if self.options.cert_dir:
            folder = Path(self.options.cert_dir)
            return {name: (folder / name).read_text() for name in (certs.CA_CERT, certs.TLS_CERT, certs.TLS_KEY)
                    if (folder / name).exists()}
        return self._managed_certificates()

    def _managed_certificates(self, attempts: int = 5) -> dict[str, str]:
        """The Secret's files, made again where certs.renewal says; a 409 (another replica wrote first) means
        read again and use theirs."""
        namespace, name = self.options.namespace, self.options.secret
        for _ in range(attempts):
            found = self.kube().get("v1", "Secret", namespace, name)
            data = {k: base64.b64decode(v).decode() for k, v in ((found or {}).get("data") or {}).items()}
            files, decision = certs.renewed(data, self.options.names(), self.clock())
            if decision is None:
                return files
            log.info(f"webhook certificate made: {decision.reason}")
            service = self.kube().get("v1", "Service", namespace, self.options.service) if self.options.service \
                else None
            secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                      "metadata": {"name": name, "namespace": namespace,
                                   "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
                                   **owned_by(service)},
                      "data": {k: base64.b64encode(v.encode()).decode() for k, v in files.items()}}
            try:
                if found is None:
                    self.kube().create(secret)
                else:
                    secret["metadata"]["resourceVersion"] = found["metadata"]["resourceVersion"]
                    self.kube().replace(secret)
            except ApiError as exc:
                if exc.status == 409:
                    continue
                raise
            return files
        raise RuntimeError(f"Secret {namespace}/{name}: conflicting writes, {attempts} times")

    def _configuration(self) -> None:
        """With a URL the operator owns the configuration; otherwise the chart made it, and the operator only
        keeps its caBundle (cert-manager's CA injector does that in cert-manager mode)."""
        ca = self.files.get(certs.CA_CERT)
        if self.options.url:
            self.kube().apply(webhook_configuration(url_client_config(self.options.url), ca))
            return
        if self.options.cert_dir:
            return
        live = self.kube().get(*CONFIGURATION, None, CONFIGURATION_NAME)
        if live is None:
            log.warning(f"no MutatingWebhookConfiguration {CONFIGURATION_NAME}: pods are not injected until it "
                        "exists (the chart makes it with webhook.enabled)")
        elif current_ca(live) != ca:
            self.kube().patch(*CONFIGURATION, None, CONFIGURATION_NAME, ca_bundle_patch(ca))
            log.info(f"caBundle of {CONFIGURATION_NAME} set to the webhook CA")
