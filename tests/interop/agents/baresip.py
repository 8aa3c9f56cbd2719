"""baresip (Debian's baresip-core) driven headless through its stdio console.

One process per account, with a config directory of its own: file audio from and to
/dev/null (no sound card), G.711 only, the menu module's long commands (``/dial``,
``/accept``, ``/hold``, ...) written to its standard input, and its SIP trace (``-s``)
parsed so tests can compare what was sent with what arrived.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

from tests.interop.agents import SipTrace, TextAgent, message_end, parse_message

MODULE_PATH = Path("/usr/lib/baresip/modules")
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


class Baresip(TextAgent):
    """One baresip process for ``user@domain``, registering through ``proxy`` from
    ``local_ip``."""

    NAME = "baresip"
    QUIT = "/quit"
    # the menu module's long commands; /uadel deletes the user agent, which unregisters
    COMMANDS = {
        "dial": "/dial {uri}",
        "accept": "/accept",
        "hangup": "/hangup",
        "hold": "/hold",
        "resume": "/resume",
        "unregister": "/uadel {aor}",
    }
    RTP_BASE = 20000
    START_TIMEOUT = 15.0
    STOP_TIMEOUT = 5.0

    def __init__(self, *args: Any, local_ip: str = "127.0.0.1", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.local_ip = local_ip

    # -- process ---------------------------------------------------------------------------

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = CONFIG.format(
            local_ip=self.local_ip,
            rtp_low=self.rtp_base,
            rtp_high=self.rtp_base + 99,
            module_path=MODULE_PATH,
            silence=write_silence(self.dir.parent / "silence-8k.wav"),
        )
        if self.trusted_ca is not None:  # SIP over TLS is in baresip's core (libre)
            config += f"sip_cafile {self.trusted_ca}\n"
        (self.dir / "config").write_text(config)
        host, port = self.proxy
        outbound = f"sip:{host}:{port};transport={self.transport}"
        aor = f"<{self.aor};transport={self.transport}>"
        (self.dir / "accounts").write_text(
            f'{aor};auth_pass={self.password};outbound="{outbound}";'
            f"regint={self.regint};answermode=manual\n"
        )

    def start(self) -> Baresip:
        self.write_config()
        self._spawn(["baresip", "-f", str(self.dir), "-s"], cwd=self.dir)
        self.expect(r"baresip is ready", self.START_TIMEOUT)
        return self

    # -- what the tests do -----------------------------------------------------------------

    def wait_registered(self, timeout: float | None = None, *, since: int = 0) -> str:
        """The registrar's 200 for this account ("... 200 OK () [1 binding]")."""
        return self.expect(
            rf"{re.escape(self.user)}@\S+: \{{0/\w+/v4\}} 200 OK", timeout, since=since
        )

    def wait_register_failed(self, timeout: float | None = None, *, since: int = 0) -> str:
        return self.expect(r"reg: \S+: .*|Register: .*", timeout, since=since)

    def wait_incoming(self, timeout: float | None = None, *, since: int = 0) -> str:
        return self.expect(r"Incoming call from: ", timeout, since=since)

    def wait_established(self, timeout: float | None = None, *, since: int = 0) -> str:
        return self.expect(r"Call established: ", timeout, since=since)

    def was_established(self, *, since: int = 0) -> bool:
        return self.saw(r"Call established", since=since)

    def wait_closed(self, timeout: float | None = None, *, since: int = 0) -> str:
        """The end of a call ("Call with ... terminated (duration ...)", "session closed: ...")."""
        return self.expect(
            r"terminated \(duration[^\n]*|session closed: [^\n]*", timeout, since=since
        )

    # -- SIP trace -------------------------------------------------------------------------

    def parse_trace(self, text: str) -> list[SipTrace]:
        messages: list[SipTrace] = []
        for head in TRACE_HEAD.finditer(text):
            transport, src, dst = head.groups()
            rest = text[head.end() :]
            end = message_end(rest)
            if end is None:
                continue  # still being printed
            sent = self.was_sent(src, dst)
            messages.append(parse_message(rest[:end], sent=sent, transport=transport))
        return messages

    def was_sent(self, source: str, destination: str) -> bool:
        """Whether a trace entry from ``source`` to ``destination`` (host:port) is one
        this phone sent: it sends everything to its proxy."""
        return destination == f"{self.proxy[0]}:{self.proxy[1]}"
