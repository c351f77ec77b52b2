"""Storage version migration: objects stored at an older version are written once at the current one.

The API server keeps each object encoded at the version that was the storage version when it was
last written, and lists those versions in the CRD's `status.storedVersions`. A version can leave a
CRD only once no object is stored at it. So the leading operator, once per CRD whose
storedVersions holds more than the storage version, rewrites every object (an empty merge patch:
the API server re-encodes the object at the storage version, as kube-storage-version-migrator's
no-op update does) and then trims storedVersions to the storage version. Run again, it finds
nothing to do: one GET per CRD.

Only an operator that watches the whole cluster can know it has seen every object; one limited
to namespaces says so and leaves the CRD alone (docs/upgrade.md has the commands).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from .client import KubeClient, KubeError, NotFound, Resource
from .resources import CRDS

log = logging.getLogger(__name__)
RETRY_SECONDS = 30.0


async def migrate(client: KubeClient, res: Resource) -> int | None:
    """Rewrite `res`'s objects stored at older versions; the number rewritten (None: nothing to do)."""
    name = f"{res.plural}.{res.group}"
    crd = await client.get(CRDS, name)
    if crd is None:
        return None
    stored = list((crd.get("status") or {}).get("storedVersions") or [])
    if not stored or stored == [res.version]:
        return None
    rewritten = 0
    for obj in await client.list(res):
        meta = obj.get("metadata") or {}
        try:
            await client.patch(res, meta["name"], {}, meta.get("namespace"))
            rewritten += 1
        except NotFound:
            continue  # deleted meanwhile: nothing of it is stored any more
    await client.patch(CRDS, name, {"status": {"storedVersions": [res.version]}}, subresource="status")
    log.info("%s: %d objects rewritten at %s; storedVersions was %s, is now [%s]",
             name, rewritten, res.version, ",".join(stored), res.version)
    return rewritten


async def migrate_all(client: KubeClient, kinds: list[Resource], *, clusterwide: bool) -> None:
    """Each kind in turn, again every RETRY_SECONDS after a failure (the webhook not yet reachable,
    an API server outage), until every kind is done."""
    if not clusterwide:
        log.info("storage version migration skipped: this operator watches only some namespaces "
                 "(see docs/upgrade.md to migrate by hand)")
        return
    pending = list(kinds)
    while pending:
        for res in list(pending):
            try:
                await migrate(client, res)
                pending.remove(res)
            except (KubeError, OSError, aiohttp.ClientError) as exc:
                if isinstance(exc, KubeError) and exc.status == 403:  # retrying cannot help: say so once
                    log.error("storage version migration of %s.%s needs get on its CRD, list and patch on its objects "
                              "and patch on the CRD's status (%s): grant them, or migrate by hand (docs/upgrade.md)",
                              res.plural, res.group, exc.api_message or exc)
                    pending.remove(res)
                    continue
                log.warning("storage version migration of %s.%s paused (next try in %.0f s): %s",
                            res.plural, res.group, RETRY_SECONDS, exc)
        if pending:
            await asyncio.sleep(RETRY_SECONDS)
