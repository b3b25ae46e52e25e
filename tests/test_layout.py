"""The shape of the library: packages by layer with imports running one way (no circle, no
import of a higher layer, function-local imports only beside a reason), and short functions."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(REPO, "tf_score")
#: higher layers may import lower ones, never the reverse (ARCHITECTURE.md)
LAYERS = {
    "atomic": 0, "registries": 0, "config": 0, "noise": 0, "data": 0, "losses": 0, "networks": 0,
    "sampling": 1, "training": 1, "evaluation": 1, "export": 1,
    "families": 3, "api": 4, "keras": 5, "cli": 6,
}  # fmt: skip
MAX_FUNCTION_LINES = 80


def _modules():
    for root, _, files in os.walk(LIB):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def _imports(path):
    """(module imported, line, function-local?) of every tf_score import in a file."""
    tree = ast.parse(open(path).read())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
             for n in ast.walk(f)}  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tf_score"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                yield name, node.lineno, id(node) in local
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tf_score"):
                    yield a.name, node.lineno, id(node) in local


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _resolve(name: str, known: set) -> str:
    """The module an import names (``from a import b`` is module a.b or attribute b of a)."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_no_module_imports_a_higher_layer():
    known = {m for m, _ in _modules()}
    bad = []
    for module, path in _modules():
        for name, line, _ in _imports(path):
            target = _resolve(name, known)
            a, b = _layer(module), _layer(target)
            if a is not None and b is not None and b > a:
                bad.append(f"{module}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    known = {m for m, _ in _modules()}
    graph = {m: set() for m in known}
    for module, path in _modules():
        for name, _, _ in _imports(path):
            target = _resolve(name, known)
            if target != module and target in known and not module.startswith(target + "."):
                graph[module].add(target)
    state, cycle = {}, []

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                cycle.append(" -> ".join([*stack[stack.index(n) :], n]))
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycle, "\n".join(cycle)


def test_absl_flags_and_app_live_in_the_command_lines_only():
    """The library takes a config: only tf_score/cli (the command lines) imports absl's flags
    or app (absl's logging is a logger like any other)."""
    bad = []
    for module, path in _modules():
        if module.startswith("tf_score.cli"):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module == "absl":
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("absl."):
                names = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("absl.")]
            if set(names) & {"flags", "app"}:
                bad.append(f"{module}:{node.lineno}")
    assert not bad, "\n".join(bad)


def test_function_local_imports_of_the_library_say_why():
    """A function-local import of tf_score must carry its reason in a comment."""
    bad = []
    for module, path in _modules():
        lines = open(path).read().splitlines()
        for _, line, local in _imports(path):
            if local and "#" not in lines[line - 1]:
                bad.append(f"{module}:{line}: {lines[line - 1].strip()}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("where", ["tf_score", "run_train.py", "run_sample.py"])
def test_no_function_is_longer_than_80_lines(where):
    paths = [os.path.join(REPO, where)]
    if os.path.isdir(paths[0]):
        paths = [
            os.path.join(r, f) for r, _, fs in os.walk(paths[0]) for f in fs if f.endswith(".py")
        ]
    long = []
    for path in paths:
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name}: {n}")
    assert not long, "\n".join(long)


def test_every_flag_is_one_config_field_or_one_api_argument():
    """tf_score/cli/definitions.py generates the flags from the config: every field has its flag
    (same name and default), every other flag is an argument of the command's API call or
    another name of a field's flag (``ALIASES``)."""
    import dataclasses

    from absl import flags as absl_flags

    import tf_score.cli.definitions as F
    from tf_score import config, sampling

    ours = {
        name for name, f in absl_flags.FLAGS._flags().items()
        if name == f.name and f.__module__ and "definitions" in str(
            absl_flags.FLAGS.find_module_defining_flag(name))
    }  # fmt: skip
    options = set(sampling.registry.all_options(builtin_only=True))
    fields = set(config.field_names()) - set(F.DERIVED)
    assert fields | options <= ours, sorted(fields | options - ours)
    assert set(F.ALIASES.values()) <= fields
    others = ours - fields - options - set(F.ALIASES)
    assert others == {*F.COMMAND, "seed"}, sorted(others)
    assert set(F.HELP) == fields | {"seed"}, sorted(set(F.HELP) ^ (fields | {"seed"}))
    for section, cls in config.SECTIONS.items():
        if section == "sampler":
            continue
        for f in dataclasses.fields(cls):
            if f.name in F.DERIVED:
                continue
            default = absl_flags.FLAGS[f.name].default
            want = [str(v) for v in f.default] if isinstance(f.default, tuple) else f.default
            assert default == (want or None if f.name == "network" else want), f.name


def test_reading_validating_and_writing_a_config_needs_neither_tensorflow_nor_the_registry():
    """The config is data: config.json of a trained run is read, checked and written again in
    a process that never imports TensorFlow, Keras or the solver registry."""
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from tf_score import config\n"
        "path = 'tests/data/a4ac31d/toy_edm/config.json'\n"
        "cfg = config.ExperimentConfig.from_json(open(path).read())\n"
        "assert config.ExperimentConfig.from_json(cfg.to_json()) == cfg\n"
        "assert len(cfg.noise.sigmas()) == cfg.noise.num_levels\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_score.sampling') if m in sys.modules]\n"
        "print(json.dumps(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
