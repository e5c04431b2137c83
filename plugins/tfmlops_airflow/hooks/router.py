"""``TrafficRouterHook``: the traffic router in front of TF Serving replica groups (HAProxy)."""

from __future__ import annotations

from functools import cached_property

from airflow.sdk import BaseHook

from tfmlops_airflow.hooks.tf_serving import TFServingHook


class TrafficRouterHook(BaseHook):
    """Connection: ``host``, ``port`` (the router's REST address clients use) and in ``extra``:
    ``grpc_port`` (its gRPC address), ``admin_socket`` (HAProxy's runtime API socket, as this
    worker reaches it) and the replica groups as TF Serving connection ids, ``stable`` and
    ``canary`` (each also the replica's ``server`` name in the router's backends); for shadow
    releases ``mirror_sink``, the URL of the router's request-mirror sink (``http://host:8650``);
    ``mirror_log_prefix``, the sink's ``--log_prefix`` as this worker reads it (a local path): the
    gray distribution check and A/B tests then read the mirror's per-group request logs.

    :meth:`router` is :class:`tfmlops.deploy.router.Router` (shares, replica health);
    :meth:`groups` the replicas' endpoints by group, as :mod:`tfmlops.deploy` drives them.
    """

    conn_name_attr = "router_conn_id"
    default_conn_name = "tf_serving_router"
    conn_type = "generic"
    hook_name = "TF Serving traffic router"

    def __init__(self, router_conn_id: str = default_conn_name, timeout: float = 30.0):
        super().__init__()
        self.router_conn_id = router_conn_id
        self.timeout = timeout
        self._hooks: dict[str, TFServingHook] = {}

    @cached_property
    def extra(self) -> dict:
        extra = self.get_connection(self.router_conn_id).extra_dejson
        missing = [k for k in ("admin_socket", "stable", "canary") if not extra.get(k)]
        if missing:
            raise ValueError(f"connection {self.router_conn_id}: extra needs {missing} (admin socket, and the "
                             "stable and canary replica groups as TF Serving connection ids)")
        return extra

    def _hook(self, conn_id: str) -> TFServingHook:
        if conn_id not in self._hooks:
            self._hooks[conn_id] = TFServingHook(conn_id, timeout=self.timeout)
        return self._hooks[conn_id]

    def groups(self) -> dict:
        return {group: [self._hook(c).endpoint() for c in self.extra[group]] for group in ("stable", "canary")}

    def mirror_sink_url(self) -> str:
        url = self.extra.get("mirror_sink")
        if not url:
            raise ValueError(f"connection {self.router_conn_id}: extra needs mirror_sink (the URL of the router's "
                             "request-mirror sink, e.g. http://mirror-sink:8650) for a shadow release")
        return str(url)

    def mirror_log_prefixes(self) -> dict[str, list[str]] | None:
        """``{group: [filename_prefix]}`` of the mirror sink's request logs, or None without
        ``mirror_log_prefix`` (the replicas' own request logs are read then)."""
        from tfmlops.deploy.mirror_sink import group_log_prefix

        prefix = self.extra.get("mirror_log_prefix")
        return {g: [group_log_prefix(str(prefix), g)] for g in ("stable", "canary")} if prefix else None

    def router(self):
        from tfmlops.deploy.router import Replica, Router

        replicas = [Replica(ep.name, group, ep.host, ep.rest_port, ep.grpc_port)
                    for group, endpoints in self.groups().items() for ep in endpoints]
        return Router(str(self.extra["admin_socket"]), replicas)

    def close(self) -> None:
        for hook in self._hooks.values():
            hook.close()
