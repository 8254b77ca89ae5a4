"""Every ```python snippet of README.md, docs/numerics.md and docs/gemm.md runs verbatim, each on
its own (a user copies one block).

A block whose first line is ``# needs: <what>`` (a downloaded model, a GPU) is skipped with that
reason; none is at present. A block that imports jax is skipped where jax is not installed (the
``jax`` extra).
"""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
# docs whose snippets are self-contained (the others show fragments of a longer program)
DOC_BLOCKS = [(name, code) for name in ("numerics.md", "gemm.md")
              for code in re.findall(r"^```python\n(.*?)^```", (ROOT / "docs" / name).read_text(), flags=re.S | re.M)]


def test_readme_has_python_snippets():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_snippet_runs_verbatim(code, tmp_path, monkeypatch):
    first = code.splitlines()[0] if code.strip() else ""
    if first.startswith("# needs:"):
        pytest.skip(first[2:])
    monkeypatch.chdir(tmp_path)              # snippets may write files (floatlab.save)
    exec(compile(code, f"README.md snippet:\n{code[:60]}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("code", [c for _, c in DOC_BLOCKS], ids=[f"{n}-{i}" for i, (n, _) in enumerate(DOC_BLOCKS)])
def test_docs_snippet_runs_verbatim(code, tmp_path, monkeypatch):
    """docs/numerics.md used undefined names (model, x, w, a, b, c, A, g) and no imports in four
    of its five blocks (found in the issue 13 new-user trial)."""
    if re.search(r"^import jax", code, flags=re.M) and importlib.util.find_spec("jax") is None:
        pytest.skip("needs the jax extra")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"docs snippet:\n{code[:60]}", "exec"), {"__name__": "__docs__"})
