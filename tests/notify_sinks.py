"""Where the tests' notifications arrive: a real SMTP server (``aiosmtpd``) and an HTTP webhook
receiver, both on loopback in the test process, recording what they get."""

from __future__ import annotations

import email
import email.policy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

import devservers


class _Mailbox:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's handler name)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


class Sinks:
    """``smtp_port`` and ``http_port``; ``mails()`` (subject, plain HTML body) and ``posts()``
    (headers, raw body, JSON) of everything received so far."""

    def __init__(self):
        self.mailbox = _Mailbox()
        self.smtp = Controller(self.mailbox, hostname="127.0.0.1", port=devservers.free_port())
        self.smtp.start()
        self.smtp_port = self.smtp.port
        received = self._posts = []

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 1 << 20))
                received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.http_port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def mails(self) -> list[tuple[str, str]]:
        out = []
        for message in list(self.mailbox.messages):
            part = message.get_body(("html", "plain"))
            out.append((str(message["Subject"]), part.get_content() if part is not None else ""))
        return out

    def posts(self) -> list[tuple[dict, bytes, dict]]:
        return [(headers, body, json.loads(body)) for headers, body in list(self._posts)]

    def clear(self) -> None:
        """Forget what arrived so far."""
        self.mailbox.messages.clear()
        self._posts.clear()

    def airflow_env(self, webhook_secret: str, to: str = "ml-team@example.test") -> dict[str, str]:
        """The connections and ``[tfmlops]`` settings that send every event here."""
        return {
            "AIRFLOW_CONN_TFMLOPS_SMTP": json.dumps({
                "conn_type": "smtp", "host": "127.0.0.1", "port": self.smtp_port,
                "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "airflow@example.test"}}),
            "AIRFLOW_CONN_TFMLOPS_CHAT": json.dumps({
                "conn_type": "http", "host": "127.0.0.1", "port": self.http_port, "password": webhook_secret,
                "extra": {"endpoint": "/hooks/ml-team"}}),
            "AIRFLOW__TFMLOPS__NOTIFY_SMTP_CONN_ID": "tfmlops_smtp",
            "AIRFLOW__TFMLOPS__NOTIFY_EMAIL_TO": to,
            "AIRFLOW__TFMLOPS__NOTIFY_WEBHOOK_CONN_ID": "tfmlops_chat",
        }

    def close(self):
        self.smtp.stop()
        self.http.shutdown()
