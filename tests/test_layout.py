"""The house has one direction of flow: run time (everything the app and `tldr-voice speak` need) imports
nothing from training, corpus or evaluation, which sit on top of it; and no module imports itself round a loop."""

import ast
import json
import subprocess
import sys
from pathlib import Path

from tldr_core.paths import REPO_ROOT

ON_TOP = ("tldr_core.training", "tldr_core.corpus", "tldr_core.evaluation", "tldr_core.cli", "tldr_core.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (inside functions too)."""
    files = sorted((REPO_ROOT / "tldr_core").rglob("*.py")) + sorted((REPO_ROOT / "app").rglob("*.py"))
    modules = {module_name(f): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def is_run_time(module: str) -> bool:
    return not module.startswith(ON_TOP)


def test_run_time_code_never_imports_training_corpus_or_evaluation_code():
    graph = import_graph()
    assert len(graph) > 30  # the whole tree was read
    arrows = sorted(f"{a} -> {b}" for a, targets in graph.items() if is_run_time(a)
                    for b in targets if not is_run_time(b))
    assert arrows == []


def test_no_module_imports_itself_round_a_loop():
    graph = import_graph()
    state: dict[str, str] = {}
    loops = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                loops.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert loops == []


def test_the_app_and_the_run_time_load_without_any_training_corpus_or_evaluation_module():
    """The same rule as loaded in a fresh interpreter: the app's window, its speech path and every run-time module."""
    run_time = sorted(m for m in import_graph() if is_run_time(m))
    script = ("import importlib, json, sys\n"
              f"for name in {run_time!r}: importlib.import_module(name)\n"
              "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert "app.main_window" in loaded and "tldr_core.synthesis" in loaded
    assert [m for m in loaded if m.startswith(ON_TOP)] == []


def test_every_network_learns_through_the_one_trainer():
    """Only trainer.py builds an optimiser or runs a backward pass: the codec, its listener and the speech LM are
    recipes (a model, batches, a loss) that it runs. The one other learner is the app's voice tuning, which fits
    the shipped decoder to one voice sample at run time (no corpus, checkpoints, schedule or processes)."""
    learners = sorted(str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "tldr_core").rglob("*.py")
                      if any(word in path.read_text() for word in ("optim.Adam", ".backward(", "optimiser.step(")))
    assert learners == ["tldr_core/codec/tuning.py", "tldr_core/training/trainer.py"]
