"""Compile the modules every packet runs through with mypyc (src/sipfleet/native.py).

    .venv/bin/python scripts/compile.py           # build, unless the build matches the sources
    .venv/bin/python scripts/compile.py --force   # build anyway
    .venv/bin/python scripts/compile.py --clean   # remove the build: run from source

The extension modules land beside their sources (gitignored), with a manifest of the
sources they were built from; sipfleet runs from source whenever that manifest does not
match. Needs gcc and the Python headers (Debian: gcc python3-dev), as scripts/setup.sh
installs them. The compiler's output goes to build/mypyc/compile.log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "mypyc"
GROUP = "sipfleet._native"  # the shared library: src/sipfleet/_native__mypyc*.so

os.environ["SIPFLEET_PURE"] = "1"  # this process reads the sources, never the old build
sys.path.insert(0, str(ROOT / "src"))
from sipfleet import native  # noqa: E402 - after the path is set


def remove_build() -> None:
    native.MANIFEST.unlink(missing_ok=True)
    for extension in native.PACKAGE_DIR.rglob("*.so"):
        extension.unlink()


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[None]:
    """Standard output and error of this process and its children (gcc) into ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    hashes = native.source_hashes()  # before compiling: an edit made meanwhile shows
    remove_build()
    BUILD.mkdir(parents=True, exist_ok=True)
    log = BUILD / "compile.log"
    os.chdir(BUILD)  # not ROOT: setup() would read the project's own pyproject.toml
    sources = [str(native.source_of(name)) for name in native.COMPILED]
    with output_to(log):
        try:
            extensions = mypycify(sources, group_name=GROUP, target_dir=str(BUILD / "c"))
            setup(
                name="sipfleet-native",
                package_dir={"": str(native.PACKAGE_DIR.parent)},
                ext_modules=extensions,
                script_args=[
                    "--quiet",
                    "build_ext",
                    "--inplace",
                    f"--build-temp={BUILD / 'temp'}",
                    f"--build-lib={BUILD / 'lib'}",
                ],
            )
        except (Exception, SystemExit) as error:  # mypy's and setuptools' errors, alike
            print(f"compile failed: {error!r}")
            failed = True
        else:
            failed = False
    if failed:
        remove_build()
        lines = log.read_text().splitlines()
        errors = [line for line in lines if "error" in line][:10] or lines[-10:]
        sys.exit(f"compile: failed, sipfleet runs from source ({log}):\n" + "\n".join(errors))
    native.MANIFEST.write_text(json.dumps(hashes, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    parser.add_argument("--clean", action="store_true", help="remove the build")
    args = parser.parse_args()
    if args.clean:
        remove_build()
        print("compile: removed the build; sipfleet runs from source")
        return
    current = native.build_mismatch(native.read_manifest()) is None
    if current and not args.force:
        print(f"compile: {len(native.COMPILED)} modules, up to date")
        return
    build()
    print(f"compile: {len(native.COMPILED)} modules compiled with mypyc ({BUILD / 'compile.log'})")


if __name__ == "__main__":
    main()
