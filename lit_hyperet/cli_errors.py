"""Config and command-line mistakes in one or two lines: the key, what is wrong, and the closest valid choice.

jsonargparse reports a mistake deep inside a ``class_path`` config as a tree of Union alternatives (about 90 lines
with the usage dump), with the useful line innermost and no suggestion; this module reads that tree back into the
dotted key the user typed and adds a "did you mean" from the class's own parameters or the ``Literal``'s values.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass

#: Set to 1 to see the traceback of a user error (bad checkpoint, config, data …) instead of its short message.
TRACEBACK_ENV = "LIT_HYPERET_TRACEBACK"

_KEY = re.compile(r'^Parser key "([^"]+)":')
_CLASS = re.compile(r"^(?:- )?Problem with given class_path '([^']+)':")
_UNKNOWN_OPTION = re.compile(r"Option '([^']+)' is not accepted")
#: The class of a callable-typed value (optimizer, lr_scheduler), named inside its leaf's text.
_CALLABLE_CLASS = re.compile(r"class_path='([^']+)'")
_LITERAL = re.compile(r"^Expected a typing\.Literal\[(.*)\](?:\. Got value: (.*))?$")
_GIVEN = re.compile(r"^Given value: (.*)$")
_UNRECOGNIZED = re.compile(r"^Unrecognized arguments: (.*)$", re.IGNORECASE)
_NOISE = re.compile(
    r"^(- )?(Does not validate against any of the Union subtypes|Subtypes: |Errors:|Given value type: |Given value: |"
    r"Expected a <class 'NoneType'>)"
)


@dataclass
class _Leaf:
    """The innermost message of the tree and the keys/classes above it."""

    text: str
    path: list[tuple[str, str]]  # ("key", name) or ("class", class_path), outermost first


def _leaves(message: str) -> list[_Leaf]:
    stack: list[tuple[int, str, str]] = []  # (indent, kind, value)
    leaves = []
    for raw in message.splitlines():
        if not raw.strip():
            continue
        indent, line = len(raw) - len(raw.lstrip()), raw.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if key := _KEY.match(line):
            stack.append((indent, "key", key.group(1)))
            rest = line[key.end() :].strip()
            if rest:  # 'Parser key "config": File does not exist: ...' on one line
                leaves.append(_Leaf(rest, [(k, v) for _, k, v in stack]))
        elif cls := _CLASS.match(line):
            stack.append((indent, "class", cls.group(1)))
        elif not _NOISE.match(line):
            leaves.append(_Leaf(line.removeprefix("- "), [(k, v) for _, k, v in stack]))
    return leaves


def _class(class_path: str) -> type | None:
    """The class jsonargparse already imported for the config (never imports anything itself)."""
    module, _, name = class_path.rpartition(".")
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _parameters(cls: type | None) -> list[str]:
    """Names a config may give ``cls``: dataclass fields, or ``__init__`` parameters (following ``**kwargs`` to the
    base classes, as jsonargparse does)."""
    if cls is None:
        return []
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _dotted(path: list[tuple[str, str]]) -> str:
    """``model.init_args.hyperet`` from the keys and classes above a leaf (dataclass values take no init_args)."""
    parts: list[str] = []
    for kind, value in path:
        if kind == "key":
            parts.append(value)
        elif not dataclasses.is_dataclass(_class(value) or object):
            parts.append("init_args")
    return ".".join(parts)


def _under_class_option(token: str, known: set[str]) -> bool:
    """Whether ``token`` is nested under an option whose own keys the parser does not list (``--model``,
    ``--data``, ``--trainer.logger``: a ``class_path`` value, checked when the class is known)."""
    for option in known:
        if token.startswith(option + "."):
            children = [other for other in known if other.startswith(option + ".")]
            if all(child.endswith(".help") for child in children):
                return True
    return False


def _suggest(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean PREFIX+closest?)`` or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def short_error(message: str, known_options: Iterable[str] = ()) -> str:
    """One or two lines for a jsonargparse error ``message``; ``known_options`` are the parser's ``--options``."""
    first = message.strip().splitlines()[0] if message.strip() else message
    if unrecognized := _UNRECOGNIZED.match(first):
        # jsonargparse lists every argument after the first it could not place, valid ones included
        known = set(known_options)
        tokens = [token.split("=", 1)[0] for token in unrecognized.group(1).split() if token.startswith("--")]
        unknown = [token for token in tokens if token not in known and not _under_class_option(token, known)]
        option = (unknown or tokens or [unrecognized.group(1)])[0]
        return f"unknown option {option}{_suggest(option, known)}"
    leaves = _leaves(message)
    if not leaves:
        return first
    depth = max(len(found.path) for found in leaves)  # the innermost; Union alternatives sit higher
    innermost = [found for found in leaves if len(found.path) == depth]
    leaf = next((found for found in innermost if _UNKNOWN_OPTION.search(found.text)), innermost[0])
    where = _dotted(leaf.path)
    classes = [value for kind, value in leaf.path if kind == "class"]
    if unknown := _UNKNOWN_OPTION.search(leaf.text):
        option = unknown.group(1)
        owner = classes[-1] if classes else ""
        if callable_class := _CALLABLE_CLASS.search(leaf.text):  # e.g. the optimizer: its class is in the text
            owner = callable_class.group(1)
            where = f"{where}.init_args" if where else "init_args"
        known = _parameters(_class(owner)) if owner else []
        prefix = f"{where}." if where else ""
        name = owner.rsplit(".", 1)[-1] or "this command"
        return f"{prefix}{option}: {name} has no such option{_suggest(option, known, prefix)}"
    literals = [match for found in innermost if (match := _LITERAL.match(found.text))]
    if literals:  # one Literal, or a Union of them (trainer.precision): every accepted value
        values: list[str] = []
        for literal in literals:
            try:
                values += [str(v) for v in ast.literal_eval(f"[{literal.group(1)}]") if str(v) not in values]
            except (SyntaxError, ValueError):
                values.append(literal.group(1))
        given = next((m.group(2) for m in literals if m.group(2)), None) or _given_value(message)
        return f"{where}: {given.strip()!r} is not one of {', '.join(values)}{_suggest(given.strip(), values)}"
    return f"{where}: {leaf.text}" if where else leaf.text


def _given_value(message: str) -> str:
    """The value jsonargparse echoes last (``Given value: …``) for errors that name none beside the choices."""
    given = [match.group(1) for line in message.splitlines() if (match := _GIVEN.match(line.strip()))]
    return given[-1] if given else "?"
