"""Sweep files (keys: the README's "Sweeps and ablations"): loading, the spread-out grid, command lines, the digest."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lit_hyperet.user_errors import UserError

PRUNERS = ("none", "median")
#: A bundle axis key: no dot, and none of the CLI's top-level keys ``config``, ``seed_everything``, ``ckpt_path``.
_BUNDLE_KEY = re.compile(r"(?!(config|seed_everything|ckpt_path)$)[^.]+")
CONFIG_KEY, NAME_KEY, SEED_KEY = "config", "name", "seed_everything"
LOGGER_KEY = "trainer.logger.init_args"
TEST_MODES = {None: "auto", True: "always", False: "never"}  # ``test:`` -> its name in the study's digest
_KEY_RE, _ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_.+-]*$"), re.compile(r"[A-Za-z_]\w*")


class SweepError(UserError):
    """An invalid sweep file or override (the message names the file and key)."""


def _key(default: Any, kind: Any, what: str, check: Callable[[Any], Any] | None = None, of: type | None = None) -> Any:
    """A ``Sweep`` field read from the sweep file key of its name: a ``kind`` (a list: of ``of``) passing ``check``."""
    meta = {"kind": kind, "what": what, "check": check, "of": of}
    return field(default_factory=lambda: copy.copy(default), metadata=meta)


@dataclass
class Sweep:
    """A parsed sweep file (the format: the README's "Sweeps and ablations"); a key left out or null: the default."""

    path: Path
    name: str = _key("", str, "a path-safe name (letters, digits, . _ -)", re.compile(r"[A-Za-z0-9._-]+").fullmatch)
    experiment: str = _key("lit_hyperet", str, "an MLflow experiment name", bool)
    description: str = _key("", str, "free text")
    configs: list[str] = _key([], list, "a non-empty list of base config files", bool)
    overrides: dict[str, Any] = _key({}, Mapping, "a mapping of dotted CLI keys to values")
    axes: dict[str, list[Any]] = _key({}, Mapping, "a mapping of dotted CLI keys to value lists")
    exclude: list[dict[str, Any]] = _key([], list, "a list of mappings")
    include: list[dict[str, Any]] = _key([], list, "a list of mappings")  # alias: runs
    seeds: list[int | None] = _key([None], list, "a list of integers, none twice", lambda v: len(set(v)) == len(v), int)
    metric: str | None = _key(None, str, "a metric name")
    test: bool | None = _key(None, bool, "auto, true or false")  # None: auto, from the config the CLI resolved
    output_dir: str = _key("", str, "a directory", bool)
    command: list[str] = _key(["python", "-m", "lit_hyperet"], list, "a non-empty list of strings", of=str)
    timeout: float | None = _key(None, (int, float), "a number of seconds", lambda v: not isinstance(v, bool))
    env: dict[str, str] = _key({}, Mapping, "a mapping of environment variable names to values",
                               lambda v: all(map(_ENV.fullmatch, map(str, v))))  # fmt: skip
    pruner: str = _key("none", str, f"one of {', '.join(PRUNERS)}", PRUNERS.__contains__)
    cli_overrides: dict[str, Any] = field(default_factory=dict)
    cli_configs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Trial:
    """A configuration at one seed; ``index``: its place in run order, ``order``: its configuration's in file order."""

    index: int
    name: str
    config_name: str
    seed: int | None
    values: dict[str, Any]  # the configuration's axis (or include entry) values, bundles by name
    configs: tuple[str, ...]
    assignments: tuple[tuple[str, Any], ...]
    output_dir: str
    order: int


def cli_value(value: Any) -> str:
    """A YAML value as jsonargparse reads it on the command line."""
    plain = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    return str(value) if plain else json.dumps(value, separators=(",", ":"), default=str)


def parse_override(text: str, source: str = "--override") -> tuple[str, Any]:
    """``key=value`` (value parsed as YAML: ``null``, numbers, lists) -> ``(key, value)``."""
    key, sep, raw = text.partition("=")
    key = key.strip().removeprefix("--")
    if not sep or not _KEY_RE.match(key):
        raise SweepError(f"{source}: expected key=value with a dotted CLI key, got {text!r}")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise SweepError(f"{source}: {key}: cannot parse value {raw!r}: {err}") from err


def slug(value: Any) -> str:
    """A short, path-safe rendering of a value for trial names."""
    if isinstance(value, str) and ("/" in value or value.endswith((".yaml", ".yml"))):
        value = Path(value).stem if value.endswith((".yaml", ".yml")) else Path(value).name
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", cli_value(value)).strip("_")[:40] or "_"


def _error(path: Path, key: str, message: str) -> SweepError:
    return SweepError(f"sweep {path}: {key}: {message}")


def _config_path(name: Any, path: Path, key: str, optional: bool = False) -> Any:
    """A config file as given, else next to the sweep file or in its parent dir (``optional``: also lists and null)."""
    if isinstance(name, list) and optional:
        return [_config_path(item, path, f"{key}[{i}]", optional) for i, item in enumerate(name)]
    if name is None and optional:
        return None
    if not isinstance(name, str) or not name:
        raise _error(path, key, f"expected a config file path, got {name!r}")
    tried = [Path(name)] + ([] if Path(name).is_absolute() else [path.parent / name, path.parent.parent / name])
    if (found := next((candidate for candidate in tried if candidate.is_file()), None)) is None:
        raise _error(path, key, f"config file {name!r} not found (tried the working dir and next to the sweep)")
    return str(found)


def _assignment(path: Path, where: str, mapping: Any, allow_name: bool, axis: bool = False) -> dict[str, Any]:
    """Dotted CLI keys to values (``axis``: to non-empty value lists, bundles named), config files resolved."""
    if not isinstance(mapping, Mapping):
        raise _error(path, where, f"expected a mapping of dotted CLI keys to values, got {mapping!r}")
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if not (key == NAME_KEY and allow_name) and (not isinstance(key, str) or not _KEY_RE.match(key)):
            raise _error(path, where, f"{key!r} is not a dotted CLI key")
        if key == SEED_KEY:
            raise _error(path, f"{where}.{key}", "use the sweep's `seeds` list for seeds")
        if axis and (not isinstance(value, list) or not value):
            raise _error(path, f"{where}.{key}", f"expected a non-empty list of values, got {value!r}")
        if axis and _BUNDLE_KEY.fullmatch(key):
            value = [_assignment(path, f"{where}.{key}[{i}]", v, allow_name=True) for i, v in enumerate(value)]
            if None in (names := [v.get(NAME_KEY) for v in value]) or len(set(names)) != len(names):
                raise _error(path, f"{where}.{key}", "a bundle axis (undotted key) needs a unique `name` per value")
        out[key] = str(value) if key == NAME_KEY and allow_name else value
        out[key] = _config_path(value, path, f"{where}.{key}", optional=True) if key == CONFIG_KEY else out[key]
    return out


def load_sweep(path: str | Path, overrides: Iterable[str] = (), extra_configs: Iterable[str] = ()) -> Sweep:
    """Read and validate a sweep file; ``overrides`` (``key=value``) and ``extra_configs`` apply to every trial."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"sweep {path}: invalid YAML: {err}") from err
    if not isinstance(raw, Mapping):
        raise SweepError(f"sweep {path}: expected a mapping at the top level")
    keys = {f.name: f.metadata for f in fields(Sweep) if f.metadata}
    if unknown := sorted(set(raw) - {*keys, "runs"}, key=str):
        raise _error(path, unknown[0], f"unknown key; valid keys: {', '.join(keys)}, runs (alias of include)")
    if raw.get("include") is not None and raw.get("runs") is not None:
        raise _error(path, "runs", "give `include` or its alias `runs`, not both")
    given = {"include" if k == "runs" else k: v for k, v in raw.items() if v is not None and (k, v) != ("test", "auto")}
    given |= {key: [given[key]] for key in ("configs", "seeds") if key in given and not isinstance(given[key], list)}
    given |= {"command": shlex.split(given["command"])} if isinstance(given.get("command"), str) else {}
    for key, spec in keys.items():  # in the order of the Sweep's fields; configs is required
        value = given.get(key)
        ok = isinstance(value, spec["kind"]) and (spec["of"] is None or {type(v) for v in value} == {spec["of"]})
        ok = ok and (spec["check"] is None or spec["check"](value))
        if (key in given or key == "configs") and not ok:
            raise _error(path, key, f"expected {spec['what']}, got {value!r}")
    given.setdefault("output_dir", f"outputs/sweeps/{given.setdefault('name', path.stem)}")
    given["configs"] = [_config_path(c, path, f"configs[{i}]") for i, c in enumerate(given["configs"])]
    given["axes"] = _assignment(path, "axes", given.get("axes", {}), allow_name=False, axis=True)
    given["exclude"] = [_assignment(path, f"exclude[{i}]", e, False) for i, e in enumerate(given.get("exclude", []))]
    given["include"] = [_assignment(path, f"include[{i}]", e, True) for i, e in enumerate(given.get("include", []))]
    given["overrides"] = _assignment(path, "overrides", given.get("overrides", {}), allow_name=False)
    if CONFIG_KEY in given["overrides"]:
        raise _error(path, "overrides.config", "put fixed config files in `configs`")
    for key in (key for entry in given["exclude"] for key in entry if key not in given["axes"]):
        raise _error(path, "exclude", f"{key!r} is not an axis (axes: {', '.join(given['axes']) or 'none'})")
    for config in (config for config in extra_configs if not Path(config).is_file()):
        raise SweepError(f"--config {config}: file not found")
    given["env"] = {str(key): cli_value(value) for key, value in given.get("env", {}).items()}
    given["include"] = given["include"] or ([] if given["axes"] else [{NAME_KEY: "default"}])
    cli = {"cli_overrides": dict(parse_override(text) for text in overrides), "cli_configs": list(extra_configs)}
    return Sweep(path=path, **given, **cli)


def _named(value: Any) -> Any:
    return value[NAME_KEY] if isinstance(value, dict) and NAME_KEY in value else value


def _grid(axes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The product of the value lists (a value that is no list: a list of one)."""
    lists = {key: value if isinstance(value, list) else [value] for key, value in axes.items()}
    return [dict(zip(lists, combo, strict=True)) for combo in itertools.product(*lists.values())]


def aliases(keys: Iterable[str]) -> dict[str, str]:
    """Short labels for dotted keys: the last segment, longer where two keys would collide (``init_args`` left out)."""
    keys = list(dict.fromkeys(keys))

    def tail(key: str, n: int) -> str:
        return ".".join(p for p in key.split(".")[-n:] if p != "init_args") or key.split(".")[-1]

    unique = lambda key, n: n > key.count(".") or all(tail(k, n) != tail(key, n) for k in keys if k != key)  # noqa: E731
    return {key: tail(key, next(n for n in range(1, key.count(".") + 2) if unique(key, n))) for key in keys}


def _label_part(key: str, value: Any, short: dict[str, str]) -> str:
    bundle = isinstance(value, dict) and NAME_KEY in value
    return f"{key if bundle else short.get(key, key.split('.')[-1])}={slug(_named(value))}"


def spread(grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid reordered so that any prefix (``--max-trials``) covers it evenly: each next configuration shares the
    fewest axis values with those already picked, ties in file order."""
    tags, left, picked = [{f"{k}={v}" for k, v in values.items()} for values in grid], list(range(len(grid))), []
    while left:
        picked.append(left.pop(min(range(len(left)), key=lambda i: sum(len(tags[left[i]] & tags[j]) for j in picked))))
    return [grid[i] for i in picked]


def dir_name(name: str) -> str:
    """A trial's directory: its name with ``=`` as ``-`` and anything else outside ``[A-Za-z0-9._-]`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("=", "-")).strip("_")


def expand(sweep: Sweep) -> list[Trial]:
    """All trials in run order: each seed over the include entries, then the grid minus exclusions, spread."""
    included = []
    for entry in sweep.include:  # list values are alternatives, named after the entry and the varying values
        varying = [key for key, value in entry.items() if isinstance(value, list) and len(value) > 1]
        for combo in _grid({key: value for key, value in entry.items() if key != NAME_KEY}):
            name = {NAME_KEY: ",".join([entry[NAME_KEY]] + [_label_part(k, combo[k], {}) for k in varying])}
            included.append(combo | name if NAME_KEY in entry else combo)
    # an exclude entry drops the combinations matching it on every key (bundles by name, lists: alternatives)
    grid = [c for c in _grid(sweep.axes) if not any({k: _named(c[k]) for k in e} in _grid(e) for e in sweep.exclude)]
    grid = grid if sweep.axes else []
    short = aliases(k for combo in included + grid for k in combo if k != NAME_KEY)

    def label(values: dict[str, Any]) -> str:
        return str(values.get(NAME_KEY, ",".join(_label_part(k, v, short) for k, v in values.items()))) or "default"

    labels: dict[str, dict[str, Any]] = {}
    for values in included + spread(grid):
        if (config := label(values)) in labels:
            raise SweepError(f"sweep {sweep.path}: two configurations share the name {config!r}: {labels[config]} and "
                             f"{values} (give include entries a unique `name`)")  # fmt: skip
        labels[config] = values
    order = {label(values): i for i, values in enumerate(included + grid)}
    trials: list[Trial] = []
    for seed, (config, values) in itertools.product(sweep.seeds, labels.items()):
        name = config + ("" if seed is None else f",seed={seed}")
        out = f"{sweep.output_dir}/{dir_name(name)}"
        bundled = {k for k, v in values.items() if isinstance(v, dict) and NAME_KEY in v and _BUNDLE_KEY.fullmatch(k)}
        flat = [kv for k, v in values.items() for kv in (v.items() if k in bundled else [(k, v)])]
        pairs = [(k, v) for k, v in flat if k not in (CONFIG_KEY, NAME_KEY)] + [(SEED_KEY, seed)] * (seed is not None)
        pairs += [("trainer.default_root_dir", out), ("checkpoint.dirpath", f"{out}/checkpoints")]
        pairs = [*sweep.overrides.items(), *pairs, *sweep.cli_overrides.items()]
        configs = [*sweep.configs, *(v for k, v in flat if k == CONFIG_KEY and v is not None), *sweep.cli_configs]
        named = {k: _named(v) for k, v in values.items()}
        trials.append(Trial(len(trials), name, config, seed, named, tuple(configs), tuple(pairs), out, order[config]))
    return trials


def axis_tags(trial: Trial) -> dict[str, str]:
    """``axis.<key>``: the trial's value on each axis (bundles and config files by name)."""
    return {f"axis.{k}": slug(v) if k == CONFIG_KEY else cli_value(v) for k, v in trial.values.items() if k != NAME_KEY}


def command_line(sweep: Sweep, trial: Trial, stage: str = "fit", extra: Iterable[str] = ()) -> list[str]:
    """``python -m lit_hyperet <stage> --config … --key value … [extra]`` for a trial (``python``: this interpreter)."""

    def args(key: str, value: Any) -> list[str]:  # ``--key=value`` for values that argparse would take for options
        text = cli_value(value)
        return [f"--{key}={text}"] if text.startswith("-") else [f"--{key}", text]

    cmd = [sys.executable if part == "python" else part for part in sweep.command] + [stage]
    cmd += [arg for path in trial.configs for arg in ("--config", path)]
    cmd += [arg for key, value in trial.assignments for arg in args(key, value)]
    cmd += args(f"{LOGGER_KEY}.experiment_name", sweep.experiment) + args(f"{LOGGER_KEY}.run_name", trial.name)
    return cmd + list(extra)


def shell_line(sweep: Sweep, trial: Trial) -> str:
    """The dry-run line of a trial: ``fit``, then ``&& … test --ckpt_path …`` when a test stage applies."""
    env = "".join(f"{k}={shlex.quote(v)} " for k, v in sweep.env.items())
    line = env + shlex.join(command_line(sweep, trial, "fit"))
    if sweep.test:
        ckpt = ["--ckpt_path", f"{trial.output_dir}/checkpoints/last.ckpt"]
        line += " && " + env + shlex.join(command_line(sweep, trial, "test", ckpt))
    elif sweep.test is None:
        line += "  # test: auto (a test stage follows when the data has a test split)"
    return line


def definition_digest(sweep: Sweep, trials: list[Trial]) -> str:
    """8 hex naming the study: the trials' command lines and the config files they read (a change is a new study)."""
    digest = hashlib.sha256()
    for trial in sorted(trials, key=lambda t: t.name):
        digest.update(json.dumps([trial.name, list(trial.configs), trial.assignments], default=str).encode())
    for path in sorted({c for t in trials for c in t.configs}):
        digest.update(Path(path).read_bytes())
    digest.update(json.dumps([TEST_MODES[sweep.test], sweep.metric, sweep.pruner, sweep.command]).encode())
    return digest.hexdigest()[:8]
