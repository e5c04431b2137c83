"""The router's pieces that need no process: weights for a share, the rendered config, its hook."""

from __future__ import annotations

import json

import pytest

from tfmlops.deploy.router import GRPC_BACKEND, REST_BACKEND, Replica, RouterConfig, group_weights


@pytest.mark.parametrize("share,n_stable,n_canary", [(5, 1, 1), (25, 2, 1), (50, 3, 2), (1, 4, 4), (99, 1, 3),
                                                     (33.3, 2, 2), (0.5, 1, 1)])
def test_group_weights_give_the_share(share, n_stable, n_canary):
    ws, wc = group_weights(share, n_stable, n_canary)
    assert 0 < ws <= 256 and 0 < wc <= 256
    measured = 100 * wc * n_canary / (wc * n_canary + ws * n_stable)
    assert abs(measured - share) <= 0.5, (ws, wc, measured)


def test_group_weights_edges_and_errors():
    assert group_weights(0, 2, 1) == (1, 0) and group_weights(100, 2, 1) == (0, 1)
    with pytest.raises(ValueError, match=r"in \[0, 100\]"):
        group_weights(101, 1, 1)
    with pytest.raises(ValueError, match="no canary replica"):
        group_weights(5, 1, 0)


def test_the_mirror_is_rendered_only_when_asked_and_checks_its_options(tmp_path):
    import shutil
    import subprocess

    replicas = [Replica("s0", "stable", "127.0.0.1", 8501, 8500), Replica("c0", "canary", "127.0.0.1", 8511, 8510)]

    def config(**kw):
        return RouterConfig(replicas, rest_port=8601, grpc_port=8600, metrics_port=8405,
                            admin_socket=str(tmp_path / "x.sock"), **kw)

    plain = config().render()
    assert "lua" not in plain and "X-Request-Id" not in plain and "wait-for-body" not in plain
    assert config(mirror_rate=0.5).render() == plain  # no sink: no mirror
    text = config(mirror_rate=0.1, mirror_sink="http://127.0.0.1:8650/v1/mirror").render()
    assert "lua-load " in text and "setenv TFMLOPS_MIRROR_SINK http://127.0.0.1:8650/v1/mirror" in text
    assert text.count("{ rand(1000000) lt 100000 }") == 2  # REST and gRPC frontends
    assert "srv_name -m str c0 }" in text and "lua.tfmlops_mirror_res grpc" in text
    assert "use-service lua.tfmlops_mirror_stats" in text and "TFMLOPS_MIRROR_DELIVERY" not in text
    assert "setenv TFMLOPS_MIRROR_DELIVERY inline" in config(
        mirror_rate=1, mirror_sink="http://h:1/v1/mirror", mirror_delivery="inline").render()
    with pytest.raises(ValueError, match="mirror_rate must be in"):
        config(mirror_rate=1.5, mirror_sink="http://h:1/v1/mirror").render()
    with pytest.raises(ValueError, match="mirror_delivery"):
        config(mirror_rate=0.5, mirror_sink="http://h:1/v1/mirror", mirror_delivery="later").render()
    if shutil.which("haproxy"):  # HAProxy itself accepts it (Lua loaded, ACLs parsed)
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(text)
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_rendered_config_has_both_protocols_and_groups():
    replicas = [Replica("s0", "stable", "127.0.0.1", 8501, 8500), Replica("c0", "canary", "127.0.0.1", 8511, 8510)]
    text = RouterConfig(replicas, rest_port=8601, grpc_port=8600, metrics_port=8405,
                        admin_socket="/tmp/x.sock").render()
    assert "bind 127.0.0.1:8600 proto h2" in text and "bind 127.0.0.1:8601\n" in text
    assert f"backend {REST_BACKEND}" in text and f"backend {GRPC_BACKEND}" in text
    assert "server s0 127.0.0.1:8501 weight 100" in text and "server c0 127.0.0.1:8511 weight 0" in text
    assert "server c0 127.0.0.1:8510 proto h2 weight 0" in text
    with pytest.raises(ValueError, match="at least one stable"):
        RouterConfig(replicas[1:], rest_port=1, grpc_port=2, metrics_port=3, admin_socket="/x").render()
    with pytest.raises(ValueError, match="group must be one of"):
        Replica("x", "blue", "h", 1, 2)


def test_router_hook_builds_groups_from_connections(monkeypatch):
    from tfmlops_airflow.hooks.router import TrafficRouterHook

    for conn, port in (("TF_SERVING_A", 9501), ("TF_SERVING_B", 9511)):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn}", json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                               "port": port, "extra": {"grpc_port": port - 1}}))
    monkeypatch.setenv("AIRFLOW_CONN_ROUTER_X", json.dumps({"conn_type": "generic", "extra": {
        "admin_socket": "/run/haproxy.sock", "stable": ["tf_serving_a"], "canary": ["tf_serving_b"]}}))
    hook = TrafficRouterHook("router_x")
    router = hook.router()
    assert router.admin_socket == "/run/haproxy.sock"
    assert [(r.name, r.group, r.rest_port, r.grpc_port) for r in router.replicas] == [
        ("tf_serving_a", "stable", 9501, 9500), ("tf_serving_b", "canary", 9511, 9510)]
    monkeypatch.setenv("AIRFLOW_CONN_ROUTER_Y", json.dumps({"conn_type": "generic", "extra": {"stable": ["a"]}}))
    with pytest.raises(ValueError, match=r"extra needs \['admin_socket', 'canary'\]"):
        TrafficRouterHook("router_y").groups()
