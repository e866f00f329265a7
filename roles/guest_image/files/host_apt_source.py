#!/usr/bin/env python3
"""Print, as JSON, the distribution mirror this host's apt already uses.

The guest image is built from the same mirror as the host's own packages, so a lab
whose only network is that mirror can still build it. deb822 ``.sources`` files are
read first, then the one-line ``sources.list`` format. Security and update suites are
skipped: debootstrap needs the release suite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def release() -> tuple[str, str]:
    info: dict[str, str] = {}
    with Path("/etc/os-release").open(encoding="utf-8") as f:
        for line in f:
            key, _, value = line.strip().partition("=")
            info[key] = value.strip('"')
    return info.get("ID", ""), info.get("VERSION_CODENAME", "")


def deb822(path: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    with Path(path).open(encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line.strip():
                if current:
                    stanzas.append(current)
                current = {}
                continue
            if line.startswith("#") or line.startswith((" ", "\t")):
                continue
            key, _, value = line.partition(":")
            current[key.strip().lower()] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def main() -> int:
    distro, codename = release()
    found: list[dict[str, str]] = []
    for path in sorted(str(p) for p in Path("/etc/apt/sources.list.d").glob("*.sources")):
        for s in deb822(path):
            if "deb" not in s.get("types", "").split() or s.get("enabled", "yes") == "no":
                continue
            if codename in s.get("suites", "").split():
                found.append({"mirror": s.get("uris", "").split()[0],
                              "keyring": s.get("signed-by", "")})
    for path in ["/etc/apt/sources.list",
                 *sorted(str(p) for p in Path("/etc/apt/sources.list.d").glob("*.list"))]:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "deb":
                if words[1].startswith("["):
                    while words and not words[0].endswith("]"):
                        words.pop(0)
                    words = ["deb", *words[1:]]
                if len(words) >= 3 and words[2] == codename:
                    found.append({"mirror": words[1], "keyring": ""})
    if not found:
        print(f"no apt source of this host serves suite {codename!r}", file=sys.stderr)
        return 1
    print(json.dumps({"distribution": distro, "suite": codename, **found[0]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
