"""`sipfleet run` with JSON logs (`[node] log_format = "json"`): every line is one JSON
object, and a line about a message names the role, the worker and the Call-ID."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from tests.integration.harness import running_cluster

PROXY_LOGS_A_FOREIGN_ROUTE = "without this dialog's token"


def test_a_proxys_json_log_names_the_call_it_is_about(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        proxy = cluster.start("proxy", node={"log_format": "json"})
        port = proxy.port
        request = (
            f"OPTIONS sip:bob@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-logs-1\r\n"
            f"Route: <sip:127.0.0.1:{port};lr>\r\n"  # ours, but with no dialog token
            "Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\n"
            "To: <sip:bob@example.com>\r\nCall-ID: logs-1@test\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(request.encode(), ("127.0.0.1", port))
        deadline = time.monotonic() + 10
        while PROXY_LOGS_A_FOREIGN_ROUTE not in proxy.log_text():
            assert time.monotonic() < deadline, proxy.log_text()
            time.sleep(0.05)
        cluster.stop_role(proxy)
        lines = [json.loads(line) for line in proxy.log_text().splitlines() if line.strip()]
    (about,) = [line for line in lines if PROXY_LOGS_A_FOREIGN_ROUTE in line["message"]]
    assert (about["role"], about["worker"], about["call_id"]) == ("proxy", 0, "logs-1@test")
    assert about["level"] == "INFO"
    assert any(line["message"].startswith("proxy ready") for line in lines)
