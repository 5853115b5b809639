"""Build-time step (Dockerfile, Blackwell stack): rewrite SAM 3D Objects' requirements files
with the replacements a pins file names (docker/blackwell-pins.txt), before upstream's own
`pip install -e '.[dev]'`, `.[p3d]` and `.[inference]` run on them.

Rewriting the files, rather than installing other versions afterwards, keeps the installed
package's metadata true to what is installed (`pip check` stays clean) and keeps upstream's
three documented steps. A pin that is not in upstream's files stops the build: moving
SAM3D_COMMIT must not silently drop a replacement.

    python repin_sam3d.py PINS_FILE SAM3D_SOURCE_DIR
"""

import sys
from pathlib import Path

REQUIREMENT_FILES = ["requirements.txt", "requirements.dev.txt", "requirements.p3d.txt",
                     "requirements.inference.txt"]


def read_pins(text: str) -> list[tuple[str, str]]:
    """(upstream's line, replacement) pairs; "" upstream adds, "" replacement removes."""
    pins = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        old, arrow, new = line.partition("->")
        if not arrow:
            raise ValueError(f"not `old -> new`: {line!r}")
        new = new.strip()
        pins.append((old.strip(), "" if new == "-" else new))
    return pins


def repin(files: dict[str, str], pins: list[tuple[str, str]]) -> dict[str, str]:
    """The requirement files' new texts (name -> text), each pin applied exactly once."""
    lines = {name: text.splitlines() for name, text in files.items()}
    for old, new in pins:
        if not old:
            lines["requirements.txt"].append(new)
            continue
        found = [(name, i) for name, body in lines.items()
                 for i, line in enumerate(body) if line.strip() == old]
        if len(found) != 1:
            raise ValueError(f"{old!r} is in upstream's requirements {len(found)} times, not once")
        name, i = found[0]
        if new:
            lines[name][i] = new
        else:
            del lines[name][i]
    return {name: "\n".join(body) + "\n" for name, body in lines.items()}


if __name__ == "__main__":
    pins_file, source = Path(sys.argv[1]), Path(sys.argv[2])
    files = {name: (source / name).read_text() for name in REQUIREMENT_FILES}
    try:
        new_files = repin(files, read_pins(pins_file.read_text()))
    except ValueError as error:
        sys.exit(f"{pins_file}: {error}")
    for name, text in new_files.items():
        (source / name).write_text(text)
        print(f"{name}: {len(text.splitlines())} requirements")
