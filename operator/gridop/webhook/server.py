"""The conversion webhook: `POST /convert` over TLS, answering the API server's ConversionReviews.

Every operator replica serves it, leader or standby, from the start of the process: the API
server needs it to read any TaskBatch at a version other than the one it was stored at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from ..api import conversion
from ..kube import KubeError
from .certs import Material

log = logging.getLogger(__name__)
MAX_REVIEW_BYTES = 64 * 1024 * 1024  # a list of many TaskBatches is converted in one review


class WebhookError(RuntimeError):
    """The webhook cannot serve (its port is taken, its certificate files are missing): one line for the user."""


class CertificateSource(Protocol):
    async def current(self) -> Material: ...

    async def inject(self, ca: bytes) -> None: ...


def review_response(review: dict[str, Any]) -> dict[str, Any]:
    """The ConversionReview answer (apiextensions.k8s.io/v1) to one request."""
    request = review.get("request") or {}
    uid = request.get("uid", "")
    desired = str(request.get("desiredAPIVersion", ""))
    group, _, version = desired.partition("/")
    try:
        if group != conversion.GROUP:
            raise conversion.ConversionError(f"cannot convert to {desired!r}: not a gridop.io version")
        converted = [conversion.convert(obj, version) for obj in request.get("objects") or []]
    except (conversion.ConversionError, TypeError, AttributeError) as exc:
        log.warning("conversion to %s refused: %s", desired, exc)
        result: dict[str, Any] = {"uid": uid, "result": {"status": "Failure", "message": str(exc)}}
    else:
        result = {"uid": uid, "result": {"status": "Success"}, "convertedObjects": converted}
    return {"apiVersion": review.get("apiVersion", "apiextensions.k8s.io/v1"), "kind": "ConversionReview", "response": result}


async def _convert(request: web.Request) -> web.Response:
    try:
        review = await request.json()
    except ValueError:
        return web.json_response({"message": "the body is not a ConversionReview (JSON)"}, status=400)
    if not isinstance(review, dict) or review.get("kind") != "ConversionReview":
        return web.json_response({"message": "the body is not a ConversionReview"}, status=400)
    # A list of many TaskBatches comes as one review: convert it off the event loop the controllers share.
    return web.json_response(await asyncio.to_thread(review_response, review))


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _load(context: ssl.SSLContext, material: Material) -> None:
    """ssl reads a certificate only from files: write them privately, load, remove (in a thread)."""
    with tempfile.TemporaryDirectory(prefix="gridop-webhook-") as directory:
        cert, key = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
        for path, data in ((cert, material.cert), (key, material.key)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(data)
        context.load_cert_chain(cert, key)


class ConversionWebhook:
    """The HTTPS server and the loop that keeps its certificate current."""

    def __init__(self, certificates: CertificateSource, host: str, port: int, check_seconds: float):
        self.certificates, self.host, self.port, self.check_seconds = certificates, host, port, check_seconds
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.serving: Material | None = None
        self._runner: web.AppRunner | None = None
        self._keeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the certificate (issuing it if need be), start serving, and keep it current."""
        delay, said = 1.0, ""
        while True:
            try:
                await self._refresh()
                break
            except (KubeError, aiohttp.ClientError) as exc:  # the API server out of reach: ride it out
                if str(exc) != said:
                    log.warning("conversion webhook waiting for its certificate (next try in %.0f s): %s", delay, exc)
                    said = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise WebhookError(f"the conversion webhook has no usable certificate: {exc}") from exc
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post("/convert", _convert)
        app.router.add_get("/healthz", _healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host or None, self.port, ssl_context=self.context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise WebhookError(f"the conversion webhook cannot listen on port {self.port} ({exc.strerror}): "
                               "set GRIDOP_WEBHOOK_PORT to a free port") from exc
        self._keeping = asyncio.create_task(self._keep())
        log.info("conversion webhook serving on port %d", self.port)

    async def _refresh(self) -> None:
        material = await self.certificates.current()
        if material != self.serving:
            await asyncio.to_thread(_load, self.context, material)  # new connections get it; open ones keep theirs
            self.serving = material
        if material.ca:
            await self.certificates.inject(material.ca)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                await self._refresh()
            except Exception as exc:  # an outage of the API server: the current certificate serves on
                log.warning("conversion webhook certificate not refreshed (next look in %.0f s): %s", self.check_seconds, exc)

    async def stop(self) -> None:
        if self._keeping is not None:
            self._keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeping
        if self._runner is not None:
            await self._runner.cleanup()
