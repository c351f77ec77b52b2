"""Kubeconfigs are read with kubectl's semantics: KUBECONFIG lists merged, relative paths, token
files, tls-server-name and proxy-url, and one readable line for a broken file."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from aiohttp import web

from gridop.kube import KubeClient, resources
from gridop.kube.access import AccessError, load_cluster_access


def _write(path: pathlib.Path, doc: dict) -> pathlib.Path:
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def two_files(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """kind writes one file per cluster; users join them with KUBECONFIG=a:b."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "token").write_text("from-file\n")
    a = _write(tmp_path / "a.yaml", {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "dev", "cluster": {"server": "https://dev.example:6443", "tls-server-name": "kubernetes",
                                                 "proxy-url": "http://proxy.example:3128"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "dev-user", "namespace": "team-a"}}],
    })
    b = _write(tmp_path / "b" / "b.yaml", {
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "dev", "cluster": {"server": "https://shadowed.example"}}],
        "users": [{"name": "dev-user", "user": {"tokenFile": "token"}}],
        "contexts": [{"name": "other", "context": {"cluster": "dev", "user": "dev-user"}}],
    })
    return a, b


async def test_a_kubeconfig_list_is_merged_as_kubectl_merges_it(two_files, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = two_files
    monkeypatch.setenv("KUBECONFIG", f"{a}:{tmp_missing(a)}:{b}")
    access = load_cluster_access()
    # current-context from b, cluster from a (the first file to name it wins), user from b, its
    # relative token file resolved against b's folder.
    assert access.server == "https://dev.example:6443"
    assert access.namespace == "team-a"
    assert access.tls_server_name == "kubernetes" and access.proxy_url == "http://proxy.example:3128"
    assert await access.bearer_token() == "from-file"
    assert load_cluster_access(context="other").namespace == "default"


def tmp_missing(near: pathlib.Path) -> pathlib.Path:
    return near.parent / "missing.yaml"  # kubectl skips a listed file that does not exist


def test_a_broken_kubeconfig_is_one_line_naming_the_file(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "config"
    bad.write_text("apiVersion: v1\nclusters: [\n  - name: x\n    cluster: {server: 'https://x'\n")
    with pytest.raises(AccessError) as err:
        load_cluster_access(bad)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"kubeconfig {bad} is not valid YAML (line ")
    empty = _write(tmp_path / "nocontext", {"apiVersion": "v1", "clusters": []})
    with pytest.raises(AccessError, match="no current-context; run `kubectl config use-context NAME`"):
        load_cluster_access(empty)


async def test_requests_go_through_the_kubeconfigs_proxy(tmp_path: pathlib.Path, unused_tcp_port: int) -> None:
    """proxy-url is honoured: the request reaches the proxy with the API server's absolute URL."""
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        return web.json_response({"kind": "Node", "metadata": {"name": "node-1"}})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        config = _write(tmp_path / "config", {
            "apiVersion": "v1", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": "http://apiserver.invalid:6443",
                                                   "proxy-url": f"http://127.0.0.1:{unused_tcp_port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        })
        async with await KubeClient.connect(load_cluster_access(config)) as api:
            ns = await api.get(resources.NODES, "node-1")
    finally:
        await runner.cleanup()
    assert ns is not None and ns["metadata"]["name"] == "node-1"
    assert seen == ["http://apiserver.invalid:6443/api/v1/nodes/node-1"]
