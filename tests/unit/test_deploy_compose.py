"""deploy/compose.yaml: Redis and three nodes whose settings load as ocm-control reads them.

CI has no Docker engine, so the file is checked here: its shape, and every node's
environment through the real configuration loader (with the image's config file).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from control.config import load

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_runs_redis_and_three_cluster_nodes() -> None:
    data = compose()
    services = data["services"]
    nodes = {name: svc for name, svc in services.items() if name.startswith("node")}
    assert set(services) == {"redis", *nodes} and len(nodes) == 3
    redis_ip = services["redis"]["networks"]["ocm"]["ipv4_address"]
    subnet = ipaddress.ip_network(data["networks"]["ocm"]["ipam"]["config"][0]["subnet"])
    assert "redis-server" in services["redis"]["command"]
    published: list[str] = []
    ids = set()
    for name, svc in nodes.items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        cfg, _ = load(["--config", str(DEPLOY / "ocm.toml")], environ=env)
        ip = svc["networks"]["ocm"]["ipv4_address"]
        assert ipaddress.ip_address(ip) in subnet
        assert cfg.node_id == name and cfg.advertise == ip
        url = urlparse(cfg.cluster)
        assert url.scheme == "redis" and url.hostname == redis_ip and url.port == 6379
        assert cfg.cluster_secret_file == "/run/secrets/ocm_cluster_secret"
        assert svc["secrets"] == ["ocm_cluster_secret"]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY.parent / svc["build"]["dockerfile"]).exists()
        published += [p.split(":")[0] + "/" + p.split("/")[-1] for p in svc["ports"]]
        ids.add(cfg.node_id)
    assert len(ids) == 3 and len(published) == len(set(published)) == 6
    assert data["secrets"]["ocm_cluster_secret"]["file"] == "./cluster.secret"
    assert "deploy/cluster.secret" in (ROOT / ".gitignore").read_text()


def test_image_installs_the_cluster_extra() -> None:
    assert '".[cluster]"' in (DEPLOY / "Dockerfile").read_text()
