"""Running sipp (Debian's sip-tester) from tests: bounded in calls and time, traced."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).parent / "scenarios"


@dataclass
class SippRun:
    returncode: int
    messages: str  # every message sent and received (-trace_msg)
    errors: str
    stdout: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def explain(self) -> str:
        tail = f"{self.stdout[-2000:]}\n{self.messages[-6000:]}"
        return f"sipp exit {self.returncode}\n{self.errors}\n{tail}"


def sipp_binary() -> str:
    found = shutil.which("sipp")
    if found is None:
        raise RuntimeError("sipp is not installed: apt-get install -y sip-tester")
    return found


def run_sipp(
    scenario: str | Path,
    target: str,
    workdir: Path,
    *,
    calls: int = 1,
    rate: int = 10,
    local_port: int | None = None,
    keys: dict[str, str] | None = None,
    inf: Path | None = None,
    timeout: float = 20.0,
    extra: list[str] | None = None,
    transport: str = "u1",
) -> SippRun:
    """Run ``scenarios/<scenario>.xml`` against ``target`` (host:port) to the end."""
    path = scenario if isinstance(scenario, Path) else SCENARIOS / f"{scenario}.xml"
    name = f"{path.stem}-{local_port or 'any'}"
    message_file = workdir / f"{name}.msg"
    error_file = workdir / f"{name}.err"
    command = [
        sipp_binary(),
        target,
        "-sf",
        str(path),
        "-i",
        "127.0.0.1",
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-t",
        transport,
        "-timeout",
        f"{int(timeout)}s",
        "-timeout_error",
        "-nostdin",
        "-trace_msg",
        "-message_file",
        str(message_file),
        "-trace_err",
        "-error_file",
        str(error_file),
        "-max_recv_loops",
        "1000",
    ]
    if local_port is not None:
        command += ["-p", str(local_port)]
    for key, value in (keys or {}).items():
        command += ["-key", key, value]
    if inf is not None:
        command += ["-inf", str(inf)]
    command += extra or []
    completed = subprocess.run(
        command, cwd=workdir, capture_output=True, timeout=timeout + 15, check=False
    )
    return SippRun(
        completed.returncode,
        message_file.read_text(errors="replace") if message_file.exists() else "",
        error_file.read_text(errors="replace") if error_file.exists() else "",
        completed.stdout.decode(errors="replace"),
    )


def start_sipp(
    scenario: str,
    workdir: Path,
    *,
    local_port: int,
    keys: dict[str, str] | None = None,
    calls: int = 1,
    timeout: float = 30.0,
    target: str | None = None,
    extra: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """A sipp in the background (a UAS waiting for calls); stop it with ``stop_sipp``."""
    name = f"{scenario}-{local_port}"
    command = [
        sipp_binary(),
        *([target] if target else []),
        "-sf",
        str(SCENARIOS / f"{scenario}.xml"),
        "-i",
        "127.0.0.1",
        "-p",
        str(local_port),
        "-m",
        str(calls),
        "-timeout",
        f"{int(timeout)}s",
        "-timeout_error",
        "-nostdin",
        "-trace_msg",
        "-message_file",
        str(workdir / f"{name}.msg"),
        "-trace_err",
        "-error_file",
        str(workdir / f"{name}.err"),
    ]
    for key, value in (keys or {}).items():
        command += ["-key", key, value]
    command += extra or []
    return subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def sipp_report(process: subprocess.Popen[bytes], workdir: Path, lines: int = 40) -> str:
    """For a failed test: stop a background sipp and show its exit code and the end of
    its message and error traces (``start_sipp`` writes them to ``workdir``)."""
    code = stop_sipp(process, wait=0.1)
    parts = [f"sipp exit code {code}"]
    for trace in sorted(workdir.glob("*.msg")) + sorted(workdir.glob("*.err")):
        tail = trace.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {trace.name}\n" + "\n".join(tail))
    return "\n".join(parts)


def stop_sipp(process: subprocess.Popen[bytes], wait: float = 10.0) -> int:
    """Wait for a background sipp to finish its calls (or stop it); returns its exit code."""
    try:
        return process.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            return process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=5)


def register_scenario(
    workdir: Path,
    *,
    user: str,
    domain: str = "example.com",
    contact: str = "<sip:[service]@[local_ip]:[local_port];transport=[transport]>",
    expires: int | None = 600,
    expect: int = 200,
    headers: tuple[str, ...] = (),
    authenticate: bool = True,
    name: str = "register",
) -> Path:
    """A REGISTER scenario written for one test: optional digest round, then ``expect``.

    Authentication uses sipp's -au/-ap credentials. Returns the scenario file.
    """
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{domain}>;tag=[pid]reg[call_number]",
        f"To: <sip:{user}@{domain}>",
        "Call-ID: [call_id]",
        "CSeq: [cseq] REGISTER",
        f"Contact: {contact}",
        *([f"Expires: {expires}"] if expires is not None else []),
        *headers,
    ]
    first = "\n      ".join([*lines, "Content-Length: 0"])
    second = "\n      ".join([*lines, "[authentication]", "Content-Length: 0"])
    steps = [_send(first)]
    if authenticate:
        steps += ['  <recv response="401" auth="true"/>', _send(second)]
    steps.append(f'  <recv response="{expect}"/>')
    xml = (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
        f'<scenario name="{name}">\n' + "\n".join(steps) + "\n</scenario>\n"
    )
    path = workdir / f"{name}.xml"
    path.write_text(xml)
    return path


def _send(message: str) -> str:
    return f'  <send retrans="500">\n    <![CDATA[\n\n      {message}\n\n    ]]>\n  </send>'
