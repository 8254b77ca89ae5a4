"""Every ```python snippet of README.md runs verbatim, each on its own (a user copies one block).

A block whose first line is ``# needs: <what>`` (a downloaded model, a GPU) is skipped with that
reason; none is at present.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_snippets():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_snippet_runs_verbatim(code, tmp_path, monkeypatch):
    first = code.splitlines()[0] if code.strip() else ""
    if first.startswith("# needs:"):
        pytest.skip(first[2:])
    monkeypatch.chdir(tmp_path)              # snippets may write files (floatlab.save)
    exec(compile(code, f"README.md snippet:\n{code[:60]}", "exec"), {"__name__": "__readme__"})
