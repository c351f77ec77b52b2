"""Where the cluster is and how to authenticate: kubeconfig or the in-cluster service account.

One loader for everything that talks to Kubernetes (the operator's own client, kopf's login,
the SDK and gridctl), so they never disagree about which cluster they are on.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import os
import pathlib
import ssl
import tempfile
from typing import Any

import yaml

SA_DIR = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")


class AccessError(RuntimeError):
    """The cluster credentials cannot be loaded; the message says which file or field."""


@dataclasses.dataclass
class ClusterAccess:
    server: str
    namespace: str = "default"
    ca_data: bytes | None = None
    insecure: bool = False
    token: str | None = None
    token_file: pathlib.Path | None = None
    client_cert_data: bytes | None = None
    client_key_data: bytes | None = None
    exec_config: dict[str, Any] | None = None
    token_expires: datetime.datetime | None = None
    tls_server_name: str | None = None  # the name to check the server's certificate against
    proxy_url: str | None = None
    _token_read_at: float = 0.0

    async def bearer_token(self) -> str | None:
        """The current token: re-read from a projected file, or refreshed from an exec plugin."""
        now = asyncio.get_running_loop().time()
        if self.token_file is not None and (self.token is None or now - self._token_read_at > 60):
            self.token = (await asyncio.to_thread(self.token_file.read_text)).strip()
            self._token_read_at = now
        if self.exec_config is not None and self._exec_expired():
            await self._run_exec_plugin()
        return self.token

    def _exec_expired(self) -> bool:
        if self.token is None and self.client_cert_data is None:
            return True
        if self.token_expires is None:
            return False
        return datetime.datetime.now(tz=datetime.UTC) >= self.token_expires - datetime.timedelta(seconds=30)

    async def _run_exec_plugin(self) -> None:
        cfg = self.exec_config or {}
        env = dict(os.environ)
        env.update({e["name"]: e["value"] for e in cfg.get("env") or []})
        env["KUBERNETES_EXEC_INFO"] = json.dumps(
            {"apiVersion": cfg.get("apiVersion"), "kind": "ExecCredential", "spec": {"interactive": False}}
        )
        proc = await asyncio.create_subprocess_exec(
            cfg["command"], *(cfg.get("args") or []), env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise AccessError(f"exec credential plugin {cfg['command']!r} failed: {err.decode(errors='replace')[:500]}")
        status = json.loads(out).get("status", {})
        self.token = status.get("token")
        if status.get("clientCertificateData"):
            self.client_cert_data = status["clientCertificateData"].encode()
            self.client_key_data = status["clientKeyData"].encode()
        expires = status.get("expirationTimestamp")
        self.token_expires = datetime.datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None

    def ssl_context(self) -> ssl.SSLContext | bool:
        """An SSL context for the API server (blocking: builds temp files for client certs)."""
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cadata=self.ca_data.decode() if self.ca_data else None)
        if self.client_cert_data and self.client_key_data:
            # ssl only loads client certificates from files.
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = pathlib.Path(tmp, "tls.crt"), pathlib.Path(tmp, "tls.key")
                cert.write_bytes(self.client_cert_data)
                key.write_bytes(self.client_key_data)
                ctx.load_cert_chain(cert, key)
        return ctx


def _data_or_file(section: dict[str, Any], key: str, base: pathlib.Path) -> bytes | None:
    if section.get(f"{key}-data"):
        return base64.b64decode(section[f"{key}-data"])
    if section.get(key):
        path = pathlib.Path(section[key])
        return (path if path.is_absolute() else base / path).read_bytes()
    return None


def _read_kubeconfig(path: pathlib.Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise AccessError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise AccessError(f"kubeconfig {path} is not valid YAML{where}: fix the file or point KUBECONFIG elsewhere") from exc
    if not isinstance(doc, dict):
        raise AccessError(f"kubeconfig {path} is not a kubeconfig (a YAML mapping with clusters, contexts and users)")
    return doc


def from_kubeconfig(path: pathlib.Path | list[pathlib.Path], context: str | None = None) -> ClusterAccess:
    """Load a kubeconfig the way kubectl does. Several files (KUBECONFIG=a:b) are merged: the first
    file to name a cluster, user or context wins, and the first non-empty current-context is used;
    relative file paths resolve against the file that holds them."""
    paths = [path] if isinstance(path, pathlib.Path) else list(path)
    current: str | None = None
    entries: dict[str, dict[str, tuple[dict[str, Any], pathlib.Path]]] = {"clusters": {}, "users": {}, "contexts": {}}
    inner = {"clusters": "cluster", "users": "user", "contexts": "context"}
    for file in paths:
        if not file.exists() and len(paths) > 1:
            continue  # kubectl skips the missing files of a list
        doc = _read_kubeconfig(file)
        current = current or doc.get("current-context") or None
        for kind, field in inner.items():
            for item in doc.get(kind) or []:
                if isinstance(item, dict) and item.get("name") is not None:
                    entries[kind].setdefault(str(item["name"]), (item.get(field) or {}, file.parent))
    where = paths[0] if len(paths) == 1 else os.pathsep.join(map(str, paths))
    name = context or current
    if name is None:
        raise AccessError(f"kubeconfig {where}: no current-context; run `kubectl config use-context NAME`")
    if name not in entries["contexts"]:
        raise AccessError(f"kubeconfig {where}: context {name!r} not found (have: {sorted(entries['contexts'])})")
    ctx, _ = entries["contexts"][name]
    if ctx.get("cluster") not in entries["clusters"]:
        raise AccessError(f"kubeconfig {where}: cluster {ctx.get('cluster')!r} of context {name!r} not found")
    cluster, cluster_base = entries["clusters"][ctx["cluster"]]
    user, user_base = entries["users"].get(ctx.get("user") or "", ({}, paths[0].parent))
    if not cluster.get("server"):
        raise AccessError(f"kubeconfig {where}: cluster {ctx['cluster']!r} has no server")
    token = user.get("token")
    token_file = None
    if not token and user.get("tokenFile"):
        token_file = pathlib.Path(user["tokenFile"])
        token_file = token_file if token_file.is_absolute() else user_base / token_file
    try:
        return ClusterAccess(
            server=str(cluster["server"]).rstrip("/"),
            namespace=ctx.get("namespace") or "default",
            ca_data=_data_or_file(cluster, "certificate-authority", cluster_base),
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
            token=token,
            token_file=token_file,
            client_cert_data=_data_or_file(user, "client-certificate", user_base),
            client_key_data=_data_or_file(user, "client-key", user_base),
            exec_config=user.get("exec"),
            tls_server_name=cluster.get("tls-server-name") or None,
            proxy_url=cluster.get("proxy-url") or None,
        )
    except OSError as exc:
        raise AccessError(f"kubeconfig {where}: cannot read {exc.filename}: {exc.strerror}") from exc


def in_cluster() -> ClusterAccess:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    namespace_file = SA_DIR / "namespace"
    return ClusterAccess(
        server=f"https://{host}:{port}",
        namespace=namespace_file.read_text().strip() if namespace_file.exists() else "default",
        ca_data=(SA_DIR / "ca.crt").read_bytes(),
        token_file=SA_DIR / "token",
    )


def load_cluster_access(kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None) -> ClusterAccess:
    """Kubeconfig when given or found ($KUBECONFIG, ~/.kube/config); otherwise in-cluster."""
    candidates: list[str] = []
    if kubeconfig:
        candidates = [str(kubeconfig)]
    elif os.environ.get("KUBECONFIG"):
        candidates = [p for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    if candidates:
        return from_kubeconfig([pathlib.Path(c).expanduser() for c in candidates], context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster()
    default = pathlib.Path("~/.kube/config").expanduser()
    if default.exists():
        return from_kubeconfig(default, context)
    raise AccessError("no cluster credentials: set KUBECONFIG, create ~/.kube/config, or run in a pod")
