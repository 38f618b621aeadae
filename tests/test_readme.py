"""The README's Python example runs as written (a newcomer copies it first)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README lost its Python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["sgd"].risk.shape == (100, 101)
    assert not namespace["best"].diverged


def test_readme_second_example_runs():
    """The block on DP-SGD, bias, adaptive and value clipping, in the first block's namespace."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2, "README lost its example of the version 0.2 algorithms"
    namespace = {}
    first = blocks[0].split("sgd = ct.simulate")[0]  # problem and noise only
    exec(compile(first, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["res"].bias[-1] != 0.0
    assert abs(namespace["ode_dp"].risk[-1]) > 0
