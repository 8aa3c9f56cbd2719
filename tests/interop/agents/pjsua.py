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
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tests.interop.agents import AgentError, SipTrace, parse_message
from tests.interop.lab import Namespace

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 20.0
EVENT_TIMEOUT = 10.0
STOP_TIMEOUT = 8.0
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


class Pjsua:
    """One PJSIP phone for ``user@domain`` in ``ns``, registering through ``proxy``."""

    def __init__(
        self,
        ns: Namespace,
        workdir: Path,
        user: str,
        domain: str,
        password: str,
        *,
        transport: str = "udp",
        proxy: tuple[str, int] = ("127.0.0.1", 5060),
        local_ip: str = "127.0.0.1",
        rtp_base: int = 30000,
    ) -> None:
        self.ns = ns
        self.user, self.domain = user, domain
        self.aor = f"sip:{user}@{domain}"
        self.settings = {
            "user": user,
            "domain": domain,
            "password": password,
            "transport": transport,
            "proxy": f"sip:{proxy[0]}:{proxy[1]};transport={transport};lr",
            "local_ip": local_ip,
            "rtp_base": rtp_base,
        }
        self.log_path = workdir / f"pjsua-{user}-{transport}.log"
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._log: IO[str] | None = None

    def start(self) -> Pjsua:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self._log = self.log_path.open("w")
        self.process = self.ns.popen(
            [sys.executable, "-m", "tests.interop.agents.pjsua", json.dumps(self.settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, name=f"pjsua-{self.user}")
        self._reader.daemon = True
        self._reader.start()
        self.wait(lambda e: e["event"] == "ready", START_TIMEOUT, "ready")
        return self

    def _read(self) -> None:
        process = self.process
        assert process is not None
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace")
            if self._log is not None:
                self._log.write(line)
                self._log.flush()
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                self.command("quit")
                process.wait(timeout=STOP_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Pjsua:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def command(self, cmd: str, **args: Any) -> None:
        process = self.process
        assert process is not None
        assert process.stdin is not None
        process.stdin.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        process.stdin.flush()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait(
        self,
        test: Callable[[dict[str, Any]], bool],
        timeout: float = EVENT_TIMEOUT,
        what: str = "event",
        *,
        since: int = 0,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[since:]:
                    if test(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    tail = "\n".join(json.dumps(e)[:400] for e in self.events[since:][-40:])
                    raise AgentError(f"pjsua {self.aor}: no {what} within {timeout} s:\n{tail}")
                self._cond.wait(min(left, 1.0))

    # -- what the tests do -----------------------------------------------------------------

    def wait_registration(self, *, since: int = 0, timeout: float = EVENT_TIMEOUT) -> int:
        """The status code of the next completed registration attempt."""
        event = self.wait(lambda e: e["event"] == "reg", timeout, "registration", since=since)
        return int(event["code"])

    def wait_registered(self, *, since: int = 0) -> None:
        code = self.wait_registration(since=since)
        assert code == 200, f"{self.aor}: registration answered {code}"

    def wait_call_state(
        self, state: str, *, since: int = 0, timeout: float = EVENT_TIMEOUT
    ) -> dict[str, Any]:
        return self.wait(
            lambda e: e["event"] == "call" and e["state"] == state,
            timeout,
            f"call {state}",
            since=since,
        )

    def wait_incoming(self, *, since: int = 0) -> dict[str, Any]:
        return self.wait(
            lambda e: e["event"] == "incoming", EVENT_TIMEOUT, "incoming call", since=since
        )

    def dial(self, uri: str) -> int:
        at = self.mark()
        self.command("call", uri=uri)
        return at

    def answer(self, code: int = 200) -> None:
        self.command("answer", code=code)

    def hangup(self) -> None:
        self.command("hangup")

    def hold(self) -> None:
        self.command("hold")

    def unregister(self) -> int:
        at = self.mark()
        self.command("unregister")
        return at

    def trace(self, *, since: int = 0) -> list[SipTrace]:
        with self._cond:
            events = list(self.events[since:])
        return [
            parse_message(e["text"], sent=e["sent"], transport=e["transport"])
            for e in events
            if e["event"] == "sip"
        ]

    def wait_message(
        self, method: str, *, sent: bool, status: int | None = None, since: int = 0
    ) -> SipTrace:
        def matches(event: dict[str, Any]) -> bool:
            if event["event"] != "sip" or event["sent"] != sent:
                return False
            message = parse_message(event["text"], sent=sent, transport=event["transport"])
            if message.method != method:
                return False
            if status is None:
                return message.status is None
            return message.status is not None and (
                message.status == status or (status == 0 and message.status >= 200)
            )

        what = method if status is None else f"{status or 'final'} response to {method}"
        event = self.wait(
            matches, EVENT_TIMEOUT, f"{what} {'sent' if sent else 'received'}", since=since
        )
        return parse_message(event["text"], sent=sent, transport=event["transport"])


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
    acfg.regConfig.timeoutSec = 600
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
