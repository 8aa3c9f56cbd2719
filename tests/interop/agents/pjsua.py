"""PJSIP (pjsua2, from the pjsua2-python wheel) as a phone, headless.

The phone is this module run as a program (``python -m tests.interop.agents.pjsua``) inside
a namespace of the lab: one account, the null sound device, one UDP and one TCP transport
on the given address. It reads commands from standard input and writes events to standard
output, one JSON object a line; every SIP message PJSIP sends or receives is an event too
(``{"event": "sip", "sent": ..., "transport": ..., "text": ...}``), so tests compare what
was sent with what arrived.

``Pjsua`` is the test side: it starts the program by PID and waits on its events.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.interop.agents import Agent, Events, SipTrace, parse_message

REPO = Path(__file__).resolve().parents[3]
# "TX 512 bytes Request msg INVITE/cseq=1 (tdta0x..) to UDP 127.0.0.1:5060:\r\n<message>--end msg--"
PJ_MSG = re.compile(
    r"(TX|RX) \d+ bytes [^\n]*? (?:to|from) (UDP|TCP|TLS) [^\n]*?:\r?\n(.*?)\r?\n?--end msg--",
    re.S,
)


def why_no_pjsua() -> str | None:
    try:
        import pjsua2  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as error:
        return f"pjsua2 does not import: {error} (pip install pjsua2-python)"
    return None


def pjsua_version() -> str:
    try:
        from importlib.metadata import version

        return version("pjsua2-python")
    except Exception:
        return "unknown"


# -- the test side ---------------------------------------------------------------------


class Pjsua(Agent[list[dict[str, Any]]]):
    """One PJSIP phone for ``user@domain`` in ``ns``, registering through ``proxy`` from
    ``local_ip``; its events (and its PJSIP log) are in ``log_path``."""

    NAME = "pjsua"
    QUIT = json.dumps({"cmd": "quit"})
    COMMANDS = {  # the phone program's commands (``_phone`` below)
        "dial": "call",
        "accept": "answer",
        "hangup": "hangup",
        "hold": "hold",
        "unregister": "unregister",
    }
    RTP_BASE = 30000

    def __init__(self, *args: Any, local_ip: str = "127.0.0.1", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.local_ip = local_ip

    def _new_feed(self) -> Events:
        return Events()

    def start(self) -> Pjsua:
        settings = {
            "user": self.user,
            "domain": self.domain,
            "password": self.password,
            "transport": self.transport,
            "proxy": f"sip:{self.proxy[0]}:{self.proxy[1]};transport={self.transport};lr",
            "local_ip": self.local_ip,
            "rtp_base": self.rtp_base,
            "regint": self.regint,
        }
        self._spawn(
            [sys.executable, "-m", "tests.interop.agents.pjsua", json.dumps(settings)],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stderr_to_log=True,
        )
        self.wait(lambda e: e["event"] == "ready", self.START_TIMEOUT, "ready")
        return self

    def command(self, cmd: str, **args: Any) -> None:
        self._write(json.dumps({"cmd": cmd, **args}))

    def _do(self, action: str, **args: str) -> None:
        self.command(self.COMMANDS[action], **args)

    def wait(
        self,
        test: Callable[[dict[str, Any]], bool],
        timeout: float | None = None,
        what: str = "event",
        *,
        since: int = 0,
    ) -> dict[str, Any]:
        """The first event after ``since`` that passes ``test``."""

        def first(events: list[dict[str, Any]]) -> dict[str, Any] | None:
            return next((event for event in events[since:] if test(event)), None)

        return self._wait(first, what, timeout or self.EVENT_TIMEOUT, since)

    def _messages(self, everything: list[dict[str, Any]], since: int) -> list[SipTrace]:
        return [
            parse_message(e["text"], sent=e["sent"], transport=e["transport"])
            for e in everything[since:]
            if e["event"] == "sip"
        ]

    # -- what the tests do -----------------------------------------------------------------

    def wait_registration(self, timeout: float | None = None, *, since: int = 0) -> int:
        """The status code of the next completed registration attempt."""
        event = self.wait(lambda e: e["event"] == "reg", timeout, "registration", since=since)
        return int(event["code"])

    def wait_registered(self, timeout: float | None = None, *, since: int = 0) -> int:
        code = self.wait_registration(timeout, since=since)
        assert code == 200, f"{self.aor}: registration answered {code}"
        return code

    def wait_register_failed(self, timeout: float | None = None, *, since: int = 0) -> int:
        code = self.wait_registration(timeout, since=since)
        assert code in (401, 403), f"{self.aor}: registration answered {code}"
        return code

    def wait_unregistered(self, timeout: float | None = None, *, since: int = 0) -> int:
        return self.wait_registered(timeout, since=since)

    def wait_call_state(
        self, state: str, timeout: float | None = None, *, since: int = 0
    ) -> dict[str, Any]:
        return self.wait(
            lambda e: e["event"] == "call" and e["state"] == state,
            timeout,
            f"call {state}",
            since=since,
        )

    def wait_incoming(self, timeout: float | None = None, *, since: int = 0) -> dict[str, Any]:
        return self.wait(lambda e: e["event"] == "incoming", timeout, "incoming call", since=since)

    def wait_established(self, timeout: float | None = None, *, since: int = 0) -> dict[str, Any]:
        return self.wait_call_state("CONFIRMED", timeout, since=since)

    def was_established(self, *, since: int = 0) -> bool:
        events = self._feed.view(lambda events: events[since:])
        return any(e["event"] == "call" and e["state"] == "CONFIRMED" for e in events)

    def wait_closed(self, timeout: float | None = None, *, since: int = 0) -> dict[str, Any]:
        """The call's end; its ``code`` is the status the call ended with."""
        return self.wait_call_state("DISCONNECTED", timeout, since=since)

    def answer(self, code: int = 200) -> None:
        self.command("answer", code=code)


# -- the phone program -------------------------------------------------------------------


def _phone(settings: dict[str, Any]) -> int:  # pragma: no cover - runs in the namespace
    import pjsua2 as pj

    out_lock = threading.Lock()

    def emit(**event: Any) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    class Writer(pj.LogWriter):  # type: ignore[misc]
        def write(self, entry: Any) -> None:
            text = entry.msg
            for found in PJ_MSG.finditer(text):
                direction, transport, message = found.groups()
                emit(event="sip", sent=direction == "TX", transport=transport, text=message)
            sys.stderr.write(text if text.endswith("\n") else text + "\n")

    ep = pj.Endpoint()
    ep.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.uaConfig.userAgent = f"pjsua2 {ep.libVersion().full}"
    writer = Writer()
    config.logConfig.writer = writer
    config.logConfig.level = 5
    config.logConfig.consoleLevel = 5
    config.logConfig.msgLogging = 1
    config.logConfig.decor = 0
    config.medConfig.noVad = True
    ep.libInit(config)
    ep.audDevManager().setNullDev()

    transports = {}
    for kind, code in (("udp", pj.PJSIP_TRANSPORT_UDP), ("tcp", pj.PJSIP_TRANSPORT_TCP)):
        tconf = pj.TransportConfig()
        tconf.boundAddress = settings["local_ip"]
        tconf.publicAddress = settings["local_ip"]
        tconf.port = 0
        transports[kind] = ep.transportCreate(code, tconf)
    ep.libStart()

    calls: list[Any] = []

    class Call(pj.Call):  # type: ignore[misc]
        def onCallState(self, prm: Any) -> None:
            info = self.getInfo()
            emit(
                event="call",
                state=info.stateText,
                code=int(info.lastStatusCode),
                reason=info.lastReason,
            )
            if info.state == pj.PJSIP_INV_STATE_DISCONNECTED and self in calls:
                calls.remove(self)

        def onCallMediaState(self, prm: Any) -> None:
            info = self.getInfo()
            for media in info.media:
                emit(event="media", status=int(media.status))

    class Account(pj.Account):  # type: ignore[misc]
        def onRegState(self, prm: Any) -> None:
            emit(event="reg", code=int(prm.code), reason=prm.reason, expiration=int(prm.expiration))

        def onIncomingCall(self, prm: Any) -> None:
            call = Call(self, prm.callId)
            calls.append(call)
            ring = pj.CallOpParam()
            ring.statusCode = 180
            call.answer(ring)
            emit(event="incoming", call=prm.callId)

    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{settings['user']}@{settings['domain']}"
    acfg.regConfig.registrarUri = f"sip:{settings['domain']};transport={settings['transport']}"
    acfg.regConfig.timeoutSec = int(settings.get("regint", 600))
    acfg.regConfig.retryIntervalSec = 0  # a refused registration is not tried again
    acfg.sipConfig.proxies.append(settings["proxy"])
    acfg.sipConfig.transportId = transports[settings["transport"]]
    acfg.sipConfig.authCreds.append(
        pj.AuthCredInfo("digest", "*", settings["user"], 0, settings["password"])
    )
    acfg.natConfig.contactRewriteUse = 0
    acfg.natConfig.viaRewriteUse = 0
    acfg.natConfig.sdpNatRewriteUse = 0
    acfg.natConfig.sipOutboundUse = 0
    acfg.mediaConfig.transportConfig.port = int(settings["rtp_base"])
    acfg.mediaConfig.transportConfig.portRange = 100
    acfg.mediaConfig.transportConfig.boundAddress = settings["local_ip"]
    account = Account()
    account.create(acfg)

    commands: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            try:
                commands.put(json.loads(line))
            except ValueError:
                continue
        commands.put(None)

    threading.Thread(target=read_commands, daemon=True).start()
    emit(event="ready", version=ep.libVersion().full)

    running = True
    while running:
        ep.libHandleEvents(20)
        try:
            command = commands.get_nowait()
        except queue.Empty:
            continue
        if command is None or command["cmd"] == "quit":
            running = False
            continue
        try:
            cmd = command["cmd"]
            if cmd == "call":
                call = Call(account)
                calls.append(call)
                call.makeCall(command["uri"], pj.CallOpParam(True))
            elif cmd == "answer":
                param = pj.CallOpParam()
                param.statusCode = int(command.get("code", 200))
                calls[-1].answer(param)
            elif cmd == "hangup":
                calls[-1].hangup(pj.CallOpParam())
            elif cmd == "hold":
                calls[-1].setHold(pj.CallOpParam(True))
            elif cmd == "unregister":
                account.setRegistration(False)
            emit(event="done", cmd=cmd)
        except Exception as error:  # a refused command is an event, the phone goes on
            emit(event="error", cmd=command.get("cmd"), error=str(error))

    ep.hangupAllCalls()
    deadline = time.monotonic() + 3
    while calls and time.monotonic() < deadline:
        ep.libHandleEvents(20)
    del calls[:]
    account.shutdown()
    ep.libDestroy()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_phone(json.loads(sys.argv[1])))
