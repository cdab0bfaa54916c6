"""A worker warms litellm up before it serves, so an answer's first call stalls nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a fresh process, as a worker: warmed up (or not), then a first streamed call to
# the fake LLM; prints how many modules that call had to import.
FIRST_CALL = """
from gevent import monkey
monkey.patch_all()
import sys
from chatsvc.engine import llm
from tests.support import FakeLLMServer
if sys.argv[1] == "warm":
    llm.warm_up()
server = FakeLLMServer()
settings = server.settings()
before = set(sys.modules)
pieces = list(llm.stream(settings, settings.model, [{"role": "user", "content": "@fake chunks=3"}]))
assert "".join(p.text for p in pieces), pieces
print(len(set(sys.modules) - before))
"""


def _imported_by_first_call(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", FIRST_CALL, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(done.stdout.split()[-1])


def test_after_the_warm_up_the_first_call_imports_nothing() -> None:
    # Without it the first call imports hundreds of modules (the OpenAI client, httpx's
    # transports, their types): the seconds of CPU that stalled a fresh worker's loop.
    assert _imported_by_first_call("cold") > 100
    assert _imported_by_first_call("warm") == 0
