"""Print the requirements of pyproject.toml for an image's dependency layer, one per line.

`python docker/requirements.py [EXTRA ...] [--without NAME ...]`: the base dependencies plus the
named extras, leaving out the packages named after --without (the CUDA image keeps its own torch).
It reads only pyproject.toml, so the layer that installs these is rebuilt only when that file
changes, not when the source does.
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def main(argv: list[str]) -> int:
    extras, without, target = [], set(), None
    for arg in argv:
        if arg == "--without":
            target = without
        elif target is without:
            without.add(arg.lower())
        else:
            extras.append(arg)
    with open("pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    for requirement in requirements:
        if requirement_name(requirement) not in without and not requirement.startswith("vidq"):
            print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
