"""The requirements of the nerfstudio environment (``make nerfstudio``), printed one a line.

Run with that environment's Python after ``pip install --no-deps nerfstudio``: nerfstudio's
own requirements (from its installed metadata; pip evaluates their markers) and this
project's (from pyproject.toml, ``dev`` included), resolved together in one pip call, less:

- ``nuscenes-devkit``: it pins numpy < 2 for the whole environment, and nerfstudio imports
  it only inside its nuScenes dataparser (that dataparser alone fails without it);
- ``torch``: the arguments (the pins installed first) stand in its place, so the resolver
  keeps them; our own cap (< 2.14, for the main CPU environment) does not apply here;
- ``open3d-cpu``: nerfstudio's ``open3d`` provides the same ``open3d`` module.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import requires
from pathlib import Path

import tomllib

SKIP = {"nuscenes-devkit", "torch", "torchvision", "open3d-cpu"}


def name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower()


def main(pins: list[str]) -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    ours = project["project"]["dependencies"] + project["project"]["optional-dependencies"]["dev"]
    # a nerfstudio requirement under an extra (dev, docs, gen) is not one of its own
    theirs = [r for r in requires("nerfstudio") or [] if "extra ==" not in r]
    for requirement in [*pins, *theirs, *ours]:
        if requirement in pins or name(requirement) not in SKIP:
            print(requirement)


if __name__ == "__main__":
    main(sys.argv[1:])
