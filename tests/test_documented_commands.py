"""Every `python -m monai.bundle` / `torchrun` command in the configs' header comments and in the docs names bundle
files that exist when it is run, as written, from the repository root."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "monai_breastlt" / "bundles"
PATH_OPTIONS = ("--bundle_root", "--config_file", "--meta_file", "--logging_file", "--tracking", "--filepath")


def _logical_lines(lines: list[str]) -> list[str]:
    """Shell lines with their backslash continuations joined."""
    out, current = [], ""
    for line in lines:
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        out.append(current)
        current = ""
    return out + ([current] if current else [])


def _header_lines(config: Path) -> list[str]:
    lines = []
    for line in config.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return _logical_lines(lines)


def _code_lines(doc: Path) -> list[str]:
    blocks = re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", doc.read_text(), flags=re.S)
    return _logical_lines([line for block in blocks for line in block.splitlines()])


def _commands(lines: list[str]) -> list[list[str]]:
    """The bundle commands among shell lines, with the `X=...` variables of earlier lines substituted and a
    `for x in a b; do` loop's command given once per value."""
    variables: dict[str, str] = {}
    loop: tuple[str, list[str]] | None = None
    commands = []
    for line in lines:
        line = line.split(" #")[0].strip()  # a trailing comment
        assignment = re.fullmatch(r"([A-Za-z_]+)=(\S+)", line)
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
            continue
        head = re.fullmatch(r"for ([A-Za-z_]+) in (.+); do", line)
        if head:
            loop = (head.group(1), head.group(2).split())
            continue
        if line == "done":
            loop = None
        if "monai.bundle" not in line:
            continue
        for value in loop[1] if loop else [None]:
            scope = {**variables, **({loop[0]: value} if loop else {})}
            text = re.sub(r"\$\{?([A-Za-z_]+)\}?", lambda m: scope.get(m.group(1), m.group(0)), line)
            commands.append(shlex.split(text.replace("[--tracking mlflow]", "")))
    return commands


def _bundle_paths(command: list[str]) -> list[str]:
    """The files and folders a command names through the options that take bundle paths."""
    paths = []
    for option, value in zip(command, command[1:]):
        if option not in PATH_OPTIONS or value in ("mlflow",) or not re.search(r"bundles/|configs/|\.json$|\.yaml$", value):
            continue
        paths += ast.literal_eval(value) if value.startswith("[") else [value]
    return paths


def _sources() -> list[Path]:
    configs = sorted(BUNDLES.glob("*/configs/*.yaml"))
    docs = [ROOT / "README.md", *sorted(BUNDLES.glob("*/docs/README.md")), *sorted((ROOT / "docs").glob("*.md"))]
    return configs + [d for d in docs if d.is_file()]


@pytest.mark.parametrize("source", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_bundle_commands_name_files_that_exist(source):
    lines = _header_lines(source) if source.suffix == ".yaml" else _code_lines(source)
    missing = [(" ".join(c)[:160], p) for c in _commands(lines) for p in _bundle_paths(c) if not (ROOT / p).exists()]
    assert not missing, f"{source.relative_to(ROOT)}: commands name missing files (run from the repository root): {missing}"


def test_the_commands_are_found():
    """The extraction sees the commands: every config that documents one, and the bundles' READMEs."""
    found = {str(s.relative_to(ROOT)): len(_commands(_header_lines(s) if s.suffix == ".yaml" else _code_lines(s))) for s in _sources()}
    cls, syn = "monai_breastlt/bundles/breastlt_classification/", "monai_breastlt/bundles/breastlt_synthesis/"
    for config in ("train", "multi_gpu_train", "inference", "evaluate"):
        assert found[f"{cls}configs/{config}.yaml"] == 1, config
    for config in ("common", "multi_gpu_train", "inference"):
        assert found[f"{syn}configs/{config}.yaml"] == 1, config
    assert found[f"{cls}docs/README.md"] >= 5 and found[f"{syn}docs/README.md"] >= 1 and found["docs/bundles.md"] >= 8
    # and the check can fail: a command relative to the bundle folder, as the headers used to give
    old = _commands(["python -m monai.bundle run --bundle_root monai_breastlt/bundles/breastlt_classification "
                     "--config_file configs/train.yaml --dataset_dir /path/to/data"])
    assert [p for p in _bundle_paths(old[0]) if not (ROOT / p).exists()] == ["configs/train.yaml"]
