"""The traffic router in front of TF Serving replica groups: HAProxy (Debian's package here; the
official image in compose), driven through its runtime API.

Why HAProxy: one process proxies both of TF Serving's protocols — REST over HTTP/1.1 and gRPC
over HTTP/2 (``proto h2`` to the servers, every gRPC call a stream it balances on its own) — and
its weights change at run time over the admin socket (``set server <backend>/<server> weight``)
without a reload, so no connection is dropped when a share moves. It exports per-server request
and error counters for Prometheus (its built-in ``prometheus-exporter`` service) and marks a
replica that stops answering DOWN by its health checks, sending its share to the others. nginx
(the other candidate) changes upstream weights only by reloading its configuration.

Shares are split between **replica groups**, the way progressive delivery works on Kubernetes:
the ``stable`` replicas serve ``100 − p`` % of the requests and the ``canary`` replicas ``p`` %
(:meth:`Router.set_share`); within a group the replicas share equally. Clients use one REST and
one gRPC address, the router's.

No Airflow, no MLflow, no TensorFlow: plain sockets and text.
"""

from __future__ import annotations

import csv
import io
import math
import os
import socket
from dataclasses import dataclass, field

STABLE, CANARY = "stable", "canary"
GROUPS = (STABLE, CANARY)
REST_BACKEND, GRPC_BACKEND = "rest_replicas", "grpc_replicas"
MAX_WEIGHT = 256  # HAProxy's server weights are 0..256
MIRROR_LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mirror.lua")
# the APIs the mirror samples (TF Serving's REST paths; the gRPC PredictionService methods)
MIRROR_REST_PATH = r"^/v1/models/[^/:]+(/versions/[0-9]+|/labels/[^/:]+)?:(predict|classify|regress)$"
MIRROR_GRPC_PATHS = tuple(f"/tensorflow.serving.PredictionService/{m}" for m in ("Predict", "Classify", "Regress"))


class RouterError(RuntimeError):
    """The router's admin socket could not be reached or refused a command (the message says which)."""


@dataclass(frozen=True)
class Replica:
    """One TF Serving replica as the router reaches it."""

    name: str
    group: str
    host: str
    rest_port: int
    grpc_port: int

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"replica {self.name}: group must be one of {GROUPS}, got {self.group!r}")


@dataclass
class RouterConfig:
    """Where the router listens (loopback unless configured) and what it routes to."""

    replicas: list[Replica]
    rest_port: int
    grpc_port: int
    metrics_port: int
    admin_socket: str
    bind: str = "127.0.0.1"
    check_interval_ms: int = 500
    server_timeout_s: float = 60.0
    extra_global: list[str] = field(default_factory=list)
    nameserver: str | None = None  # e.g. Docker's 127.0.0.11:53: replica addresses re-resolved at run time
    # request mirror (:mod:`.mirror_sink`): this share of the Predict/Classify/Regress requests, with
    # their answers, goes to the sink's URL (``http://host:port/v1/mirror``); 0 or no sink: none
    mirror_rate: float = 0.0
    mirror_sink: str | None = None
    mirror_lua: str = MIRROR_LUA  # where the router finds mirror.lua (a path inside the container in compose)
    mirror_max_queue: int = 1000  # records waiting for the sink, at most (more are dropped and counted)
    mirror_max_queue_bytes: int = 32 << 20
    mirror_wait_ms: int = 1000  # longest wait for a sampled request's/response's body to be complete
    # "task": a Lua task delivers off the request path; "inline": the answer waits for the sink
    # (only to measure what the task saves; see mirror_sink's docstring)
    mirror_delivery: str = "task"

    @property
    def mirrored(self) -> bool:
        return bool(self.mirror_sink) and self.mirror_rate > 0

    def _mirror_global(self) -> list[str]:
        if not self.mirrored:
            return []
        if self.mirror_delivery not in ("task", "inline"):
            raise ValueError(f"mirror_delivery must be task or inline, got {self.mirror_delivery!r}")
        # a sink named by host name (compose: mirror-sink) is resolved by the httpclient through the
        # same resolvers as the replicas when there are some; IPv4 first (HAProxy prefers IPv6)
        resolve = ["    httpclient.resolvers.id dns"] if self.nameserver else []
        return [*resolve, "    httpclient.resolvers.prefer ipv4",
                f"    setenv TFMLOPS_MIRROR_SINK {self.mirror_sink}",
                *([f"    setenv TFMLOPS_MIRROR_DELIVERY {self.mirror_delivery}"]
                  if self.mirror_delivery != "task" else []),
                f"    setenv TFMLOPS_MIRROR_RATE {self.mirror_rate:g}",
                f"    setenv TFMLOPS_MIRROR_MAX_QUEUE {int(self.mirror_max_queue)}",
                f"    setenv TFMLOPS_MIRROR_MAX_QUEUE_BYTES {int(self.mirror_max_queue_bytes)}",
                f"    lua-load {self.mirror_lua}"]

    def _mirror_frontend(self, protocol: str) -> list[str]:
        """The sampled requests: a request id for every request (the client's, else a new one,
        so that the replica's own logs and the mirror's share it), the body kept, the response's
        body awaited and queued for the sink by mirror.lua."""
        if not self.mirrored:
            return []
        if not 0 < self.mirror_rate <= 1:
            raise ValueError(f"mirror_rate must be in (0, 1], got {self.mirror_rate}")
        threshold = round(self.mirror_rate * 1_000_000)
        api = (f"METH_POST {{ path_reg {MIRROR_REST_PATH} }}" if protocol == "rest"
               else f"{{ path {' '.join(MIRROR_GRPC_PATHS)} }}")
        canary = " ".join(r.name for r in self.replicas if r.group == CANARY)
        wait = f"{int(self.mirror_wait_ms)}ms"
        on = "{ var(txn.mirror) -m bool }"
        return [
            "    http-request set-header X-Request-Id %[uuid] unless { req.hdr(x-request-id) -m found }",
            f"    http-request set-var(txn.mirror) bool(1) if {api} {{ rand(1000000) lt {threshold} }}",
            *([] if protocol == "rest" else [f"    http-request wait-for-body time {wait} if {on}"]),
            f"    http-request lua.tfmlops_mirror_req if {on}",
            f"    http-response wait-for-body time {wait} if {on}",
            *([f"    http-response set-var(txn.mirror_group) str({CANARY}) if {on} {{ srv_name -m str {canary} }}"]
              if canary else []),
            f"    http-response lua.tfmlops_mirror_res {protocol} if {on}",
        ]

    def render(self) -> str:
        """The ``haproxy.cfg``: both groups in one backend per protocol, canary at weight 0."""
        if not any(r.group == STABLE for r in self.replicas):
            raise ValueError("the router needs at least one stable replica")
        names = [r.name for r in self.replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique: {names}")
        t = f"{int(self.server_timeout_s * 1000)}ms"
        lines = [
            "global",
            f"    stats socket {self.admin_socket} mode 600 level admin",
            "    maxconn 4096",
            *[f"    {line}" for line in self.extra_global],
            *self._mirror_global(),
            "",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 60s",
            f"    timeout server {t}",
            "    timeout http-keep-alive 60s",
            # a request that could not reach a replica (refused, reset before an answer) is sent
            # to another one: a replica that dies takes no client request with it
            "    retries 3",
            "    option redispatch 1",
            "    retry-on conn-failure empty-response response-timeout",
            "",
            *(["resolvers dns", f"    nameserver dns1 {self.nameserver}", "    hold valid 10s", ""]
              if self.nameserver else []),
            "frontend rest",
            f"    bind {self.bind}:{self.rest_port}",
            "    option http-buffer-request",
            *self._mirror_frontend("rest"),
            f"    default_backend {REST_BACKEND}",
            "",
            "frontend grpc",
            f"    bind {self.bind}:{self.grpc_port} proto h2",
            *self._mirror_frontend("grpc"),
            f"    default_backend {GRPC_BACKEND}",
            "",
            "frontend metrics",
            f"    bind {self.bind}:{self.metrics_port}",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            *(["    http-request use-service lua.tfmlops_mirror_stats if { path /mirror/stats }"]
              if self.mirrored else []),
            "    http-request return status 404",
            "",
        ]
        for backend, port_of, proto in ((REST_BACKEND, "rest_port", ""), (GRPC_BACKEND, "grpc_port", " proto h2")):
            # a replica whose name does not resolve yet starts DOWN instead of failing the router
            resolve = " resolvers dns init-addr last,libc,none" if self.nameserver else " init-addr last,libc,none"
            lines += [f"backend {backend}", "    balance roundrobin",
                      f"    default-server check inter {self.check_interval_ms}ms fall 2 rise 2{resolve}"]
            for r in self.replicas:
                weight = 100 if r.group == STABLE else 0
                lines.append(f"    server {r.name} {r.host}:{getattr(r, port_of)}{proto} weight {weight}")
            lines.append("")
        return "\n".join(lines)


def group_weights(share_pct: float, n_stable: int, n_canary: int) -> tuple[int, int]:
    """Per-server weights (stable, canary) that give the canary group ``share_pct`` % of the
    requests when every server of a group has the same weight."""
    if not 0 <= share_pct <= 100:
        raise ValueError(f"canary share must be in [0, 100] %, got {share_pct}")
    if n_stable < 1 and share_pct < 100:
        raise ValueError("no stable replica to send the rest of the traffic to")
    if n_canary < 1 and share_pct > 0:
        raise ValueError("no canary replica to send a share to")
    if share_pct <= 0:
        return 1, 0
    if share_pct >= 100:
        return 0, 1
    # w_s * n_s : w_c * n_c = (100 - p) : p, in integers up to MAX_WEIGHT (1/100 % resolution at best)
    p = round(share_pct * 100)
    ws, wc = (10000 - p) * n_canary, p * n_stable
    g = math.gcd(ws, wc)
    ws, wc = ws // g, wc // g
    scale = max(ws, wc) / MAX_WEIGHT
    if scale > 1:
        ws, wc = max(1, round(ws / scale)), max(1, round(wc / scale))
    return ws, wc


class Router:
    """An HAProxy process's admin socket (``stats socket ... level admin``)."""

    def __init__(self, admin_socket: str, replicas: list[Replica], timeout_s: float = 5.0):
        self.admin_socket = admin_socket
        self.replicas = list(replicas)
        self.timeout_s = timeout_s
        self.share_pct = 0.0

    def command(self, line: str) -> str:
        """One runtime API command, its answer (HAProxy closes the connection after it)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout_s)
                s.connect(self.admin_socket)
                s.sendall(line.encode() + b"\n")
                chunks = []
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                    if sum(len(c) for c in chunks) > 8 << 20:
                        raise RouterError(f"{self.admin_socket}: answer to {line!r} over 8 MiB")
        except OSError as exc:
            raise RouterError(f"router admin socket {self.admin_socket}: {exc}") from exc
        return b"".join(chunks).decode("utf-8", errors="replace")

    def set_share(self, share_pct: float) -> None:
        """Send ``share_pct`` % of the requests (REST and gRPC) to the canary group, the rest to the
        stable group; connections stay open (weights apply to the next requests)."""
        stable = [r for r in self.replicas if r.group == STABLE]
        canary = [r for r in self.replicas if r.group == CANARY]
        ws, wc = group_weights(share_pct, len(stable), len(canary))
        # raise the receiving side first, so that no moment has every weight at 0
        order = (canary, stable) if share_pct > self.share_pct else (stable, canary)
        for group in order:
            weight = wc if group is canary else ws
            for r in group:
                for backend in (REST_BACKEND, GRPC_BACKEND):
                    answer = self.command(f"set server {backend}/{r.name} weight {weight}").strip()
                    if answer:
                        raise RouterError(f"set weight {backend}/{r.name} {weight}: {answer}")
        self.share_pct = float(share_pct)

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show stat``: {(backend, server): row} of the replicas."""
        text = self.command("show stat")
        if not text.startswith("# "):
            raise RouterError(f"show stat answered: {text[:200]!r}")
        rows = csv.DictReader(io.StringIO(text[2:]))
        return {(row["pxname"], row["svname"]): row for row in rows
                if row["pxname"] in (REST_BACKEND, GRPC_BACKEND) and row["svname"] not in ("FRONTEND", "BACKEND")}

    def down(self) -> list[str]:
        """Replicas a health check marks as not answering (``DOWN``), by backend/server."""
        return sorted(f"{b}/{s}" for (b, s), row in self.stats().items() if row.get("status", "").startswith("DOWN"))

    def served(self) -> dict[str, int]:
        """Responses each group has sent back (both protocols) since the router started."""
        out = {STABLE: 0, CANARY: 0}
        group = {r.name: r.group for r in self.replicas}
        for (_, server), row in self.stats().items():
            if server in group:
                out[group[server]] += sum(int(row.get(f"hrsp_{c}xx") or 0) for c in range(1, 6))
        return out
