"""Docstrings and comments name things that exist.

Every ``dotted.name`` or ``name()`` in double backticks in a docstring (any bare string
statement) or comment of tf_score/, flags/, run_train.py, run_sample.py is judged by its head
(first component). A reference: ``tf_score``; the last name of a module under tf_score/
(``registry.plan``); a class defined at the top level of a tf_score module
(``TrainStep.loss``); a top-level name of the file, imports included (``F.sample_config``);
a dotted or called head bound nowhere in the file (``train_step.TrainStep``). Never one: a
file name (``config.json``); a head bound, not imported, by an enclosing function (its
parameters, and its locals outside its own docstring) or class (body names, ``__init__``
parameters): ``cfg.seed``, ``run.config``. Nor, if none of the above, a head bound elsewhere
in the file (``tf.function`` after a local import), a plain word, or a single ``name()`` that
a tf_score module or class defines (a method: ``summary()``).

A reference resolves when, for some reading of the head, every further part (a trailing
``()`` dropped) is an attribute, a submodule, or a dataclass, annotated or NamedTuple field
(past a field nothing is checked). The head may also read as a class-typed field of a tf_score
class: ``evaluation.bits_per_dim`` is ``ExperimentConfig.evaluation.bits_per_dim``.
"""

import ast
import builtins
import dataclasses
import importlib
import inspect
import os
import re
import tokenize
import typing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = re.compile(r"``([A-Za-z_]\w*(?:\.\w+)*)(\(\))?``")
FILE_SUFFIXES = {"py", "json", "npz", "npy", "h5", "png", "txt", "csv", "pb", "yaml", "md"}
SCOPES = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _module_name(path):
    parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files():
    for top in ("tf_score", "flags"):
        for d, dirs, names in os.walk(os.path.join(ROOT, top)):
            dirs.sort()
            yield from (os.path.join(d, n) for n in sorted(names) if n.endswith(".py"))
    yield from (os.path.join(ROOT, n) for n in ("run_train.py", "run_sample.py"))


def _resolves(obj, parts):
    """Every part is an attribute, submodule or field of the one before (a field: stop)."""
    for part in parts:
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if inspect.ismodule(obj):
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
                continue
            except ImportError:
                return False
        cls = obj if inspect.isclass(obj) else type(obj)
        fields = set(getattr(cls, "_fields", ()))  # a NamedTuple's
        if dataclasses.is_dataclass(cls):
            fields |= {f.name for f in dataclasses.fields(cls)}
        for c in cls.__mro__:
            annotations = vars(c).get("__annotations__")
            fields |= set(annotations) if isinstance(annotations, dict) else set()
        return part in fields
    return True


def _bound(nodes, imports=True):
    """Names these nodes bind: parameters, targets, defs, exception names (and imports)."""
    out = set()
    for n in (n for node in nodes for n in ast.walk(node)):
        if isinstance(n, ast.arg | SCOPES):
            out.add(n.arg if isinstance(n, ast.arg) else n.name)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, ast.alias) and imports:
            out.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
    return out


def _scope_locals(tree, line):
    """Names bound (not imported) by the functions and classes enclosing ``line``."""
    out = set()
    for n in ast.walk(tree):
        if not (isinstance(n, SCOPES) and n.lineno <= line <= n.end_lineno):
            continue
        if isinstance(n, ast.ClassDef):
            init = [s.args for s in n.body if isinstance(s, SCOPES) and s.name == "__init__"]
            body = [s for s in n.body if not isinstance(s, SCOPES)] + init
            out |= _bound(body, imports=False)
            continue
        doc = n.body[0] if ast.get_docstring(n, clean=False) is not None else None
        in_doc = doc is not None and doc.lineno <= line <= doc.end_lineno
        out |= _bound([n.args]) | (set() if in_doc else _bound(n.body, imports=False))
    return out


def _texts(path, source, tree):
    """(line number, text) of every bare string statement's lines and every comment."""
    lines = source.splitlines()
    for n in ast.walk(tree):
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant):
            if isinstance(n.value.value, str):
                yield from ((i, lines[i - 1]) for i in range(n.lineno, n.end_lineno + 1))
    with open(path, encoding="utf-8") as f:
        for tok in tokenize.generate_tokens(f.readline):
            if tok.type == tokenize.COMMENT:
                yield tok.start[0], tok.string


def _index():
    """Heads: tf_score's modules by last name and top-level classes by name; sections: the
    tf_score types of class fields by field name; names: all a module or class defines."""
    heads, sections, names = {"tf_score": [importlib.import_module("tf_score")]}, {}, set()
    for name in (_module_name(p) for p in _files() if _module_name(p).startswith("tf_score")):
        module = importlib.import_module(name)
        heads.setdefault(name.rsplit(".", 1)[-1], []).append(module)
        names |= set(vars(module))
        for cls in (c for _, c in inspect.getmembers(module, inspect.isclass)):
            if cls.__module__ != name:
                continue
            heads.setdefault(cls.__name__, []).append(cls)
            names |= set(vars(cls))
            try:
                hints = typing.get_type_hints(cls)
            except Exception:  # an annotation naming a type-checking-only import
                hints = {}
            for field, t in hints.items():
                if inspect.isclass(t) and t.__module__.startswith("tf_score"):
                    sections.setdefault(field, []).append(t)
    return heads, sections, names


def _unresolved(path, heads, sections, names):
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    module = importlib.import_module(_module_name(path))
    top = _bound([s for s in tree.body if not isinstance(s, SCOPES)])
    top |= {s.name for s in tree.body if isinstance(s, SCOPES)}
    anywhere = _bound([tree]) | set(dir(builtins))
    for line, text in _texts(path, source, tree):
        for m in TOKEN.finditer(text):
            (head, *rest), called = m.group(1).split("."), bool(m.group(2))
            if (rest and rest[-1] in FILE_SUFFIXES) or head in _scope_locals(tree, line):
                continue
            roots = heads.get(head, []) + ([getattr(module, head, None)] if head in top else [])
            if not roots and (head in anywhere or not (rest or called)):
                continue  # a name of this file's own (a local, a third-party module) or a word
            if not roots and not rest and head in names:
                continue  # ``summary()``: a tf_score function or method
            if not any(_resolves(r, rest) for r in roots + sections.get(head, [])):
                yield f"{os.path.relpath(path, ROOT)}:{line}: ``{m.group(0)[2:-2]}``"


def test_docstrings_name_things_that_exist():
    heads, sections, names = _index()
    bad = [b for path in _files() for b in _unresolved(path, heads, sections, names)]
    assert not bad, "backticked names that do not exist:\n" + "\n".join(bad)


def test_the_glossary_s_evaluation_table_is_the_registry_s():
    """A solver's evaluation count is stated once, in its registry entry: the docs' table is
    generated from the entries (``registry.evaluations_table``) and must be that table."""
    from tf_score.sampling import registry

    with open(os.path.join(ROOT, "docs", "glossary.md")) as f:
        text = f.read()
    start = text.index("<!-- generated: registry.evaluations_table() -->\n")
    block = text[start : text.index("\n<!-- end generated -->")].split("\n", 1)[1]
    assert block == registry.evaluations_table()
