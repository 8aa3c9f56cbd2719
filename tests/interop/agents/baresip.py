"""baresip (Debian's baresip-core) driven headless through its stdio console.

One process per account, with a config directory of its own: file audio from and to
/dev/null (no sound card), G.711 only, the menu module's long commands (``/dial``,
``/accept``, ``/hold``, ...) written to its standard input, and its SIP trace (``-s``)
parsed so tests can compare what was sent with what arrived.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import wave
from pathlib import Path
from typing import IO, Any

from tests.interop.agents import AgentError, Output, SipTrace, parse_message
from tests.interop.lab import Namespace

MODULE_PATH = Path("/usr/lib/baresip/modules")
START_TIMEOUT = 15.0
EVENT_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# "#\nUDP 127.0.0.1:40000 -> 127.0.0.1:5060\n<message>" in the SIP trace (-s)
TRACE_HEAD = re.compile(r"#\r?\n(UDP|TCP|TLS) (\S+) -> (\S+)\r?\n")


def why_no_baresip() -> str | None:
    if shutil.which("baresip") is None:
        return "baresip is not installed (apt-get install baresip-core)"
    for module in ("stdio.so", "menu.so", "account.so", "aufile.so", "g711.so"):
        if not (MODULE_PATH / module).exists():
            return f"baresip module {module} is missing"
    return None


def baresip_version() -> str:
    out = subprocess.run(["baresip", "-h"], capture_output=True, text=True, timeout=10)
    found = re.search(r"baresip v(\S+)", out.stdout + out.stderr)
    return found.group(1) if found else "unknown"


SILENCE_SECONDS = 120  # longer than any call of the tests: aufile stops at the file's end


def write_silence(path: Path) -> Path:
    """A WAV of silence (8 kHz, mono, S16LE) for aufile to send: there is no sound card."""
    if not path.exists():
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(b"\0\0" * 8000 * SILENCE_SECONDS)
    return path


CONFIG = """\
poll_method epoll
net_interface {local_ip}
sip_listen {local_ip}:0
call_local_timeout 120
call_max_calls 4
audio_source aufile,{silence}
audio_srate 8000
audio_channels 1
rtp_ports {rtp_low}-{rtp_high}
module_path {module_path}
module stdio.so
module g711.so
module aufile.so
module_app account.so
module_app menu.so
"""


class Baresip:
    """One baresip process for ``user@domain``, registering through ``proxy``."""

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
        regint: int = 600,
        rtp_base: int = 20000,
    ) -> None:
        self.ns = ns
        self.user, self.domain, self.password = user, domain, password
        self.aor = f"sip:{user}@{domain}"
        self.transport = transport
        self.proxy = proxy
        self.local_ip = local_ip
        self.regint = regint
        self.rtp_base = rtp_base
        self.dir = workdir / f"baresip-{user}-{transport}"
        self.output = Output()
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._log: IO[str] | None = None

    # -- process ---------------------------------------------------------------------------

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config").write_text(
            CONFIG.format(
                local_ip=self.local_ip,
                rtp_low=self.rtp_base,
                rtp_high=self.rtp_base + 99,
                module_path=MODULE_PATH,
                silence=write_silence(self.dir.parent / "silence-8k.wav"),
            )
        )
        host, port = self.proxy
        outbound = f"sip:{host}:{port};transport={self.transport}"
        aor = f"<{self.aor};transport={self.transport}>"
        (self.dir / "accounts").write_text(
            f'{aor};auth_pass={self.password};outbound="{outbound}";'
            f"regint={self.regint};answermode=manual\n"
        )

    def start(self) -> Baresip:
        self.write_config()
        self._log = (self.dir / "output.log").open("w")
        self.process = self.ns.popen(
            ["baresip", "-f", str(self.dir), "-s"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        self._reader = threading.Thread(target=self._read, name=f"baresip-{self.user}")
        self._reader.daemon = True
        self._reader.start()
        self.expect(r"baresip is ready", START_TIMEOUT)
        return self

    def _read(self) -> None:
        process = self.process
        assert process is not None
        assert process.stdout is not None
        fd = process.stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            text = data.decode("utf-8", errors="replace")
            if self._log is not None:
                self._log.write(text)
                self._log.flush()
            self.output.feed(text)
        self.output.close()

    def stop(self) -> None:
        """``/quit`` (which unregisters), then SIGTERM and SIGKILL by PID if it lingers."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                self.command("/quit")
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
        if process.stdin is not None:
            process.stdin.close()
        if process.stdout is not None:
            process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Baresip:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- console ---------------------------------------------------------------------------

    def command(self, line: str) -> None:
        process = self.process
        assert process is not None
        assert process.stdin is not None
        process.stdin.write(line.encode() + b"\n")
        process.stdin.flush()

    def mark(self) -> int:
        return self.output.mark()

    def expect(self, pattern: str, timeout: float = EVENT_TIMEOUT, *, since: int = 0) -> str:
        """Wait for ``pattern`` in the output after ``since``; fail with the output's tail."""
        found = self.output.wait_for(pattern, timeout, since=since)
        if found is None:
            raise AgentError(
                f"baresip {self.aor}: no {pattern!r} within {timeout} s; output:\n"
                f"{self.output.text()[since:][-6000:]}"
            )
        return found.group(0)

    def saw(self, pattern: str, *, since: int = 0) -> bool:
        return re.search(pattern, self.output.text()[since:]) is not None

    # -- what the tests do -----------------------------------------------------------------

    def wait_registered(self, timeout: float = EVENT_TIMEOUT, *, since: int = 0) -> str:
        """The registrar's 200 for this account ("... 200 OK () [1 binding]")."""
        return self.expect(
            rf"{re.escape(self.user)}@\S+: \{{0/\w+/v4\}} 200 OK", timeout, since=since
        )

    def wait_register_failed(self, timeout: float = EVENT_TIMEOUT, *, since: int = 0) -> str:
        return self.expect(r"reg: \S+: .*|Register: .*", timeout, since=since)

    def dial(self, uri: str) -> int:
        at = self.mark()
        self.command(f"/dial {uri}")
        return at

    def accept(self) -> None:
        self.command("/accept")

    def hangup(self) -> None:
        self.command("/hangup")

    def hold(self) -> None:
        self.command("/hold")

    def resume(self) -> None:
        self.command("/resume")

    def wait_incoming(self, timeout: float = EVENT_TIMEOUT, *, since: int = 0) -> str:
        return self.expect(r"Incoming call from: ", timeout, since=since)

    def wait_established(self, timeout: float = EVENT_TIMEOUT, *, since: int = 0) -> str:
        return self.expect(r"Call established: ", timeout, since=since)

    def wait_closed(self, timeout: float = EVENT_TIMEOUT, *, since: int = 0) -> str:
        """The end of a call ("Call with ... terminated (duration ...)", "session closed: ...")."""
        return self.expect(
            r"terminated \(duration[^\n]*|session closed: [^\n]*", timeout, since=since
        )

    def unregister(self) -> int:
        """Delete the user agent (``/uadel``), which sends REGISTER with expires 0."""
        at = self.mark()
        self.command(f"/uadel {self.aor}")
        return at

    # -- SIP trace -------------------------------------------------------------------------

    def trace(self, *, since: int = 0) -> list[SipTrace]:
        """Every SIP message of the trace after ``since``, in order."""
        return self._parse_trace(self.output.text()[since:])

    def _parse_trace(self, text: str) -> list[SipTrace]:
        heads = list(TRACE_HEAD.finditer(text))
        messages: list[SipTrace] = []
        for head in heads:
            transport, _src, dst = head.groups()
            rest = text[head.end() :]
            header_end = rest.find("\r\n\r\n")
            if header_end < 0:
                continue  # still being printed
            length = re.search(r"^(?:Content-Length|l)\s*:\s*(\d+)", rest[:header_end], re.M | re.I)
            size = int(length.group(1)) if length else 0
            if len(rest) < header_end + 4 + size:
                continue  # its body is still being printed
            message = rest[: header_end + 4 + size]
            sent = dst == f"{self.proxy[0]}:{self.proxy[1]}"
            messages.append(parse_message(message, sent=sent, transport=transport))
        return messages

    def requests(self, method: str, *, sent: bool, since: int = 0) -> list[SipTrace]:
        return [
            m
            for m in self.trace(since=since)
            if m.status is None and m.method == method and m.sent == sent
        ]

    def responses(self, method: str, *, sent: bool, since: int = 0) -> list[SipTrace]:
        return [
            m
            for m in self.trace(since=since)
            if m.status is not None and m.method == method and m.sent == sent
        ]

    def wait_message(
        self,
        method: str,
        *,
        sent: bool,
        status: int | None = None,
        since: int = 0,
        timeout: float = EVENT_TIMEOUT,
    ) -> SipTrace:
        """The first ``method`` request (or, with ``status``, response to it; 0: any final
        one) sent or received after ``since``, once the trace shows all of it."""

        def find(text: str) -> SipTrace | None:
            for message in self._parse_trace(text[since:]):
                if message.method != method or message.sent != sent:
                    continue
                if status is None and message.status is None:
                    return message
                if (
                    status is not None
                    and message.status is not None
                    and (message.status == status or (status == 0 and message.status >= 200))
                ):
                    return message
            return None

        found = self.output.wait_until(find, timeout)
        if found is None:
            what = method if status is None else f"{status or 'final'} response to {method}"
            raise AgentError(
                f"baresip {self.aor}: no {what} {'sent' if sent else 'received'} within "
                f"{timeout} s; output:\n{self.output.text()[since:][-6000:]}"
            )
        return found
