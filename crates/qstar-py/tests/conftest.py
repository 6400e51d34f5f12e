"""Shared fixtures: the default model (opened once) and the repository's files."""

import json
import os
from pathlib import Path

import pytest

import qstar

ROOT = Path(__file__).resolve().parents[3]


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def qstar_binary() -> Path:
    """The release build of the command-line program (`cargo test --release` builds it)."""
    path = Path(os.environ.get("QSTAR_BIN", target_dir() / "release" / "qstar"))
    assert path.is_file(), f"{path} is missing: build it with `cargo build --release`"
    return path


def read_jsonl(path: Path, limit=None):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit]


@pytest.fixture(scope="session")
def model():
    return qstar.Model()


@pytest.fixture(scope="session")
def pairs():
    return read_jsonl(ROOT / "examples" / "pairs.jsonl", limit=3)
