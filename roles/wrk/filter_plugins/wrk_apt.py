"""Filters that derive deb-src entries from a host's own apt sources.

`wrk_source_type: debian` builds wrk from the distribution's source package, which
needs deb-src entries. Rather than naming any mirror, the role mirrors the host's
existing `deb` entries (deb822 `.sources` stanzas and one-line `.list` entries) as
`deb-src`, keeping their URIs, suites, components and Signed-By.
"""

from __future__ import annotations

import base64
from typing import Any


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = None
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
            continue
        if raw[0] in " \t" and key is not None:
            current[key] += "\n" + raw.rstrip()
            continue
        name, sep, value = raw.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _from_deb822(text: str) -> list[dict[str, Any]]:
    entries = []
    for stanza in _deb822_stanzas(text):
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        signed_by = stanza.get("signed-by")
        entries.append(
            {
                "types": stanza.get("types", "").split(),
                "uris": stanza.get("uris", "").split(),
                "suites": stanza.get("suites", "").split(),
                "components": stanza.get("components", "").split(),
                "signed_by": signed_by if signed_by else None,
            }
        )
    return entries


def _from_one_line(text: str) -> list[dict[str, Any]]:
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind not in ("deb", "deb-src"):
            continue
        rest = rest.strip()
        options: dict[str, str] = {}
        if rest.startswith("["):
            opts, _, rest = rest[1:].partition("]")
            for opt in opts.split():
                name, _, value = opt.partition("=")
                options[name.lower()] = value
        fields = rest.split()
        if len(fields) < 2:
            continue
        entries.append(
            {
                "types": [kind],
                "uris": [fields[0]],
                "suites": [fields[1]],
                "components": fields[2:],
                "signed_by": options.get("signed-by"),
            }
        )
    return entries


def wrk_apt_entries(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries of apt source files (deb822 `.sources` or one-line `.list`).

    Takes `[{path, content}]`, or the results of a looped `slurp` (`source`, base64
    `content`); files that could not be read (no content) are skipped.
    """
    entries: list[dict[str, Any]] = []
    for item in files:
        if "content" not in item:
            continue
        path = item.get("path") or item.get("source") or ""
        content = item["content"]
        if item.get("encoding") == "base64":
            content = base64.b64decode(content).decode("utf-8", "replace")
        if path.endswith(".sources"):
            entries.extend(_from_deb822(content))
        elif path.endswith(".list"):
            entries.extend(_from_one_line(content))
    return entries


def wrk_deb_src_missing(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """deb entries whose (URI, suite) pairs have no deb-src entry yet, as deb-src stanzas.

    Each result has uris, suites, components and signed_by; a stanza keeps only the
    suites that still lack sources, so re-running on a host that has some deb-src
    entries adds just the rest.
    """
    have = {
        (uri.rstrip("/"), suite)
        for e in entries
        if "deb-src" in e["types"]
        for uri in e["uris"]
        for suite in e["suites"]
    }
    missing: list[dict[str, Any]] = []
    for entry in entries:
        if "deb" not in entry["types"] or not entry["uris"]:
            continue
        for uri in entry["uris"]:
            suites = [s for s in entry["suites"] if (uri.rstrip("/"), s) not in have]
            if not suites:
                continue
            stanza = {
                "uris": [uri],
                "suites": suites,
                "components": entry["components"],
                "signed_by": entry["signed_by"],
            }
            if stanza not in missing:
                missing.append(stanza)
            have.update((uri.rstrip("/"), s) for s in suites)
    return missing


class FilterModule:
    """wrk filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "wrk_apt_entries": wrk_apt_entries,
            "wrk_deb_src_missing": wrk_deb_src_missing,
        }
