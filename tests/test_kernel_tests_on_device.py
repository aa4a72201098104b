"""The kernel tests must put their inputs on DEV ("cuda" on a GPU, "cpu" in the interpreter).

In CI the interpreter runs every kernel on CPU tensors, so a test that builds CPU tensors and
calls backend="triton" passes there and fails on the first GPU run (`launch.require_cuda`
refuses CPU tensors), which is rare and short here. Nine tests had that bug. This holds the
rule statically: every function of the kernel test files that calls an op with
backend="triton" must name DEV (or a local `dev`) somewhere in its body."""
import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# the files whose kernels take backend= (the optimizer and full-catalog step tests pick the
# backend another way and build their tensors on DEV / dev throughout)
FILES = ["test_gru_kernel.py", "test_scoring_kernel.py", "test_ranking_kernel.py",
         "test_fused_step_kernel.py"]


def _functions_calling_triton(tree):
    """(name, puts its inputs on DEV) for each function with a backend="triton" call: it names
    DEV / dev itself or calls a function of the file that does (a case builder)."""
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    names = {f.name: {n.id for n in ast.walk(f) if isinstance(n, ast.Name)} for f in functions}
    builders = {f for f, used in names.items() if used & {"DEV", "dev"}}
    for node in functions:
        calls_triton = any(isinstance(k, ast.keyword) and k.arg == "backend"
                           and isinstance(k.value, ast.Constant) and k.value.value == "triton"
                           for k in ast.walk(node))
        if calls_triton:
            yield node.name, bool(names[node.name] & ({"DEV", "dev"} | builders))


@pytest.mark.parametrize("name", FILES)
def test_every_triton_call_of_a_kernel_test_has_its_inputs_on_dev(name):
    tree = ast.parse((TESTS / name).read_text())
    found = list(_functions_calling_triton(tree))
    assert found, f"{name}: no backend='triton' call found (the check would be empty)"
    without = [fn for fn, uses_dev in found if not uses_dev]
    assert not without, f"{name}: {without} call backend='triton' without DEV"


def test_the_check_catches_a_test_on_cpu_tensors():
    src = ("def test_x():\n    h = torch.randn(2, 3)\n"
           "    f(h, backend='triton')\n")
    assert list(_functions_calling_triton(ast.parse(src))) == [("test_x", False)]
