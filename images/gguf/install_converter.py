"""Install llama.cpp's HF->GGUF converter from the llama-cpp-python sdist (stdlib only).

    python images/gguf/install_converter.py DEST [--version 0.3.36] [--sdist FILE]

The sdist vendors llama.cpp at the exact commit whose shared library the venv's llama_cpp was built
from, so converter and quantizer agree on the GGUF format. It is fetched with `pip download
--no-deps --no-binary :all:` (pip's cache makes a second fetch cheap), and only what the converter
needs is extracted into DEST: convert_hf_to_gguf.py, conversion/, gguf-py/, models/templates/
(chat templates some converters read), the licence and the converter's requirements files.
Idempotent: DEST/.kubetune-llama-cpp.json records the version; a matching install is left alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
MARKER = ".kubetune-llama-cpp.json"
VENDOR = "vendor/llama.cpp/"
WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/", "LICENSE",
          "requirements/requirements-convert_hf_to_gguf.txt",
          "requirements/requirements-convert_legacy_llama.txt")


def installed(dest: Path, version: str) -> bool:
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("llama_cpp_python") == version and (dest / "convert_hf_to_gguf.py").is_file()


def download_sdist(version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "--dest", str(into)]
    subprocess.run(cmd, check=True)
    found = sorted(into.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        raise SystemExit(f"install_converter: pip downloaded no llama_cpp_python-{version}.tar.gz "
                         f"into {into}")
    return found[0]


def extract(sdist: Path, dest: Path, version: str) -> list[str]:
    """Extract the converter's files from `sdist` into `dest` (replaced atomically)."""
    tmp = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=dest.parent))
    taken: list[str] = []
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                _, _, rel = m.name.partition("/")  # strip llama_cpp_python-X.Y.Z/
                if not rel.startswith(VENDOR):
                    continue
                inner = rel[len(VENDOR):]
                if any(inner == w or (w.endswith("/") and inner.startswith(w)) for w in WANTED):
                    if m.isfile() or m.isdir():
                        m.name = inner
                        members.append(m)
                        taken.append(inner)
            if "convert_hf_to_gguf.py" not in taken:
                raise SystemExit(f"install_converter: {sdist} has no {VENDOR}convert_hf_to_gguf.py; the "
                                 "sdist's layout changed")
            tar.extractall(tmp, members=members, filter="data")
        (tmp / MARKER).write_text(json.dumps({"llama_cpp_python": version, "sdist": sdist.name}) + "\n")
        tmp.chmod(0o755)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--version", default=VERSION)
    parser.add_argument("--sdist", type=Path, help="use this sdist instead of downloading it")
    args = parser.parse_args(argv)
    dest = args.dest.resolve()
    if installed(dest, args.version):
        print(f"install-llama-cpp-tools: {dest} already holds the converter of llama-cpp-python "
              f"{args.version}")
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kubetune-sdist-") as dl:
        sdist = args.sdist or download_sdist(args.version, Path(dl))
        taken = extract(sdist, dest, args.version)
    print(f"install-llama-cpp-tools: llama.cpp converter of llama-cpp-python {args.version} in {dest} "
          f"({len(taken)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
