"""Every example of the README and of docs/getting-started.md runs as written, in order, in a scratch copy of the
repository: a user's first hour, as a test.

The examples are the ```bash and ```python fences of those pages (a fence without a language is a listing or an
output, and is not run). Each is preceded by its declaration, an HTML comment that the page does not show:

    <!-- example: DIRECTIVE; DIRECTIVE ... -->

- ``skip: REASON``: the block is not run; the reason names what runs it instead;
- ``omit WORD: REASON``: its command lines containing WORD are not run;
- ``append WORD: ARGS``: ARGS are appended to its command lines containing WORD (small sizes: a few steps, clips);
- ``replace OLD => NEW``: OLD is replaced by NEW in its lines;
- ``serve WORD``: the line containing WORD is a server: it runs in the background until the block ends, and the
  next lines run once it answers at ``{port}``.

``{port}`` stands for a free port, the same within a block. A fence without a declaration fails the test, so a new
example is run (or says why not) from the day it is written. The scratch copy is the repository's tracked files
with the venv linked in, so the pages' relative paths mean what they mean in a checkout; the clips a user would
bring (``my_clips/``, ``labelled/`` shards, ``a.mp4``) are synthesised there first.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shards.config import SynthConfig
from shards.synth import synthesise
from shards.write import write_shards
from trainer.programs.harness import free_port

REPO = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "docs/getting-started.md")
FENCE = re.compile(r"^```(\w*)\s*$")
DECLARATION = re.compile(r"<!--\s*example:(.*?)-->", re.S)
COMMAND_TIMEOUT_S = 600


@dataclass
class Example:
    page: str
    line: int                    # of the fence's first line
    language: str
    lines: list[tuple[int, str]]  # (line number, logical command line: continuations joined)
    directives: list[str] = field(default_factory=list)
    declared: bool = False        # an ``example:`` comment is above the fence (it may hold no directive)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _logical_lines(first: int, raw: list[str], language: str) -> list[tuple[int, str]]:
    if language == "python":
        return [(first, "\n".join(raw))]
    lines, pending, start = [], "", first
    for number, text in enumerate(raw, first):
        if not pending:
            start = number
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        command = (pending + text).strip()
        pending = ""
        if command and not command.startswith("#"):
            lines.append((start, command))
    return lines


def examples(page: str) -> list[Example]:
    """The fenced examples of ``page`` with their declarations (the comment just above each fence)."""
    text = (REPO / page).read_text().splitlines()
    found, i = [], 0
    while i < len(text):
        match = FENCE.match(text[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(text)) if text[j].startswith("```"))
        language = match.group(1)
        if language in ("bash", "sh", "python"):
            above = "\n".join(text[max(0, i - 6):i])
            declared = DECLARATION.findall(above.split("```")[-1])
            directives = [d.strip() for d in declared[-1].replace("\n", ";").split(";") if d.strip()] if declared \
                else []
            found.append(Example(page, i + 1, language, _logical_lines(i + 2, text[i + 1:end], language),
                                 directives, bool(declared)))
        i = end + 1
    return found


def _without_comment(command: str) -> tuple[str, str]:
    """(command, trailing '# comment') of one shell line: a # after whitespace, outside quotes."""
    quote = None
    for k, c in enumerate(command):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (k == 0 or command[k - 1].isspace()):
            return command[:k].rstrip(), command[k:]
    return command, ""


def prepared(example: Example, port: int) -> tuple[list[tuple[int, str, bool]], str | None]:
    """(lines to run as (line number, command, is_server), skip reason) after the declaration's directives."""
    out = []
    for number, command in example.lines:
        omitted, server = False, False
        for directive in example.directives:
            verb, _, rest = directive.partition(" ")
            if directive.startswith("skip:"):
                return [], directive[5:].strip()
            if verb == "omit":
                word, _, reason = rest.partition(":")
                assert reason.strip(), f"{example.where}: 'omit {word}' needs a reason"
                omitted |= word.strip() in command
            elif verb == "append":
                word, _, args = rest.partition(":")
                if word.strip() in command:
                    body, comment = _without_comment(command) if example.language != "python" else (command, "")
                    command = f"{body} {args.strip()} {comment}".rstrip()
            elif verb == "replace":
                old, _, new = rest.partition("=>")
                command = command.replace(old.strip(), new.strip())
            elif verb == "serve":
                server |= rest.strip() in command
            else:
                raise AssertionError(f"{example.where}: unknown directive {directive!r}")
        if not omitted:
            out.append((number, command.replace("{port}", str(port)), server))
    return out, None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A copy of the repository's tracked files, the venv linked in, and the clips a user brings."""
    root = tmp_path_factory.mktemp("checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    # The venv is this suite's own, linked: `make` in the copy must find it installed (the stamp of `make install`
    # newer than the copy's pyproject.toml), or it would reinstall the package into it from the copy, and every
    # console script would then run the copy's code once the copy is gone.
    stamp = Path(sys.prefix) / ".cmg-installed"
    if not stamp.is_file():
        pytest.skip(f"{sys.prefix} was not made by `make install` (no {stamp.name}): `make` in a copy would reinstall")
    (root / ".venv").symlink_to(Path(sys.prefix))
    for name in ("pyproject.toml", "constraints.txt"):
        os.utime(root / name, (stamp.stat().st_mtime - 1,) * 2)
    synthesise(SynthConfig(num_clips=8, classes=4, seconds=10, size=64, seed=3, unlabelled=True), root / "my_clips",
               progress=False)
    shutil.copy(sorted((root / "my_clips").glob("*.mp4"))[0], root / "a.mp4")
    labelled = root / "labelled_clips"
    synthesise(SynthConfig(num_clips=40, classes=4, seconds=10, size=64, seed=4), labelled, progress=False)
    write_shards(labelled, str(root / "labelled" / "train-%06d.tar"), max_count=5, progress=False)   # 8 shards
    return root


def _environment(root: Path) -> dict[str, str]:
    """The shell of a user who activated the venv in the checkout: ``cmg`` and ``python`` are the venv's, and the
    checkout's packages are the ones imported (PYTHONPATH: an editable install would point at this repository)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTEST_"))}
    return {**env, "PATH": f"{Path(sys.prefix) / 'bin'}:{env['PATH']}", "PYTHONPATH": str(root),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}


def run_example(example: Example, root: Path) -> str | None:
    """Run one example in ``root``; the skip reason, or None when it ran."""
    port = free_port()
    lines, skipped = prepared(example, port)
    if skipped:
        return skipped
    env, servers = _environment(root), []
    try:
        for number, command, server in lines:
            argv = ["bash", "-c", f"set -eo pipefail\n{command}"] if example.language != "python" else \
                [sys.executable, "-c", command]
            if server:
                log = open(root / f"server-{port}.log", "w")
                servers.append(subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True))
                deadline = time.monotonic() + 120
                while not _answers(f"http://127.0.0.1:{port}/health"):
                    assert servers[-1].poll() is None, \
                        f"{example.page}:{number}: `{command}` exited: {(root / f'server-{port}.log').read_text()}"
                    assert time.monotonic() < deadline, f"{example.page}:{number}: `{command}` never answered"
                    time.sleep(0.5)
                continue
            done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            assert done.returncode == 0, (f"{example.page}:{number}: `{command}` exited {done.returncode}\n"
                                          f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    return None


def test_every_example_is_declared():
    """Each runnable fence says how the test runs it (or why it does not)."""
    for page in PAGES:
        for example in examples(page):
            assert example.declared, f"{example.where}: no '<!-- example: ... -->' above the fence"
            for number, command in example.lines:
                assert "…" not in command, f"{page}:{number}: an example with '…' cannot be run as written"
            prepared(example, 0)   # unknown directives and reasonless omits fail here


@pytest.mark.slow
def test_the_readme_and_the_quick_start_run_as_written_in_order(scratch):
    ran, skipped = [], []
    for page in PAGES:
        for example in examples(page):
            started = time.monotonic()
            reason = run_example(example, scratch)
            (skipped if reason else ran).append(f"{example.where} ({time.monotonic() - started:.0f} s)"
                                                + (f": {reason}" if reason else ""))
    print("ran:", *ran, "skipped:", *skipped, sep="\n  ")
    assert len(ran) >= 6
    # what the blocks left is what a user then looks at
    assert (scratch / "codes.npz").is_file() and (scratch / "exports" / "mine" / "model.safetensors").is_file()
