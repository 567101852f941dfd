"""Sweep files (their keys: the README's "Sweeps and ablations"): loading, the grid in a spread-out order, per-trial
command lines, and the digest naming a study."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lit_hyperet.user_errors import UserError

SWEEP_KEYS = tuple(
    "name experiment description configs overrides axes exclude include runs seeds metric test output_dir command "
    "timeout env pruner".split()
)
PRUNERS = ("none", "median")
#: Top-level CLI keys without a dot (anything else without a dot in ``axes`` is a bundle axis).
PLAIN_TOP_LEVEL_KEYS = ("seed_everything", "ckpt_path")
CONFIG_KEY, NAME_KEY, SEED_KEY = "config", "name", "seed_everything"
DEFAULT_COMMAND = ["python", "-m", "lit_hyperet"]
LOGGER_KEY = "trainer.logger.init_args"
TEST_MODES = {None: "auto", True: "always", False: "never"}  # ``test:`` -> its name in the study's digest
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.+-]*$")


class SweepError(UserError):
    """An invalid sweep file or override (the message names the file and key)."""


@dataclass
class Sweep:
    """A parsed sweep file (the format: the README's "Sweeps and ablations")."""

    path: Path
    name: str
    configs: list[str]
    axes: dict[str, list[Any]]
    experiment: str = "lit_hyperet"
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=lambda: [None])
    overrides: dict[str, Any] = field(default_factory=dict)
    cli_overrides: dict[str, Any] = field(default_factory=dict)
    cli_configs: list[str] = field(default_factory=list)
    metric: str | None = None
    test: bool | None = None  # None: "auto", decided after fit from the config the CLI resolved
    output_dir: str = ""
    command: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    pruner: str = "none"


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
    if value is not None and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def cli_args(key: str, value: Any) -> list[str]:
    """``--key value`` (``--key=value`` for values starting with ``-``, which argparse would take for options)."""
    text = cli_value(value)
    return [f"--{key}={text}"] if text.startswith("-") else [f"--{key}", text]


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


def _config_path(name: Any, path: Path, key: str) -> str:
    """A config file as given (relative to the working dir), else relative to the sweep file or its parent dir."""
    if not isinstance(name, str) or not name:
        raise _error(path, key, f"expected a config file path, got {name!r}")
    tried = [Path(name)] + ([] if Path(name).is_absolute() else [path.parent / name, path.parent.parent / name])
    found = next((candidate for candidate in tried if candidate.is_file()), None)
    if found is None:
        raise _error(path, key, f"config file {name!r} not found (tried the working dir and next to the sweep)")
    return str(found)


def _key(path: Path, where: str, key: Any) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise _error(path, where, f"{key!r} is not a dotted CLI key")
    if key == SEED_KEY:
        raise _error(path, f"{where}.{key}", "use the sweep's `seeds` list for seeds")
    return key


def _is_bundle_key(key: str) -> bool:
    return "." not in key and key != CONFIG_KEY and key not in PLAIN_TOP_LEVEL_KEYS


def _assignment(path: Path, where: str, mapping: Any, allow_name: bool) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        raise _error(path, where, f"expected a mapping of dotted CLI keys to values, got {mapping!r}")
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if key == NAME_KEY and allow_name:
            out[key] = str(value)
            continue
        key = _key(path, where, key)
        if key == CONFIG_KEY and isinstance(value, list):  # alternatives (include entries)
            value = [None if v is None else _config_path(v, path, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        elif key == CONFIG_KEY and value is not None:
            value = _config_path(value, path, f"{where}.{key}")
        out[key] = value
    return out


def _axes(path: Path, raw: Any) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _error(path, "axes", "expected a mapping of dotted CLI keys to value lists")
    axes: dict[str, list[Any]] = {}
    for key, values in raw.items():
        where = f"axes.{_key(path, 'axes', key)}"
        if not isinstance(values, list) or not values:
            raise _error(path, where, f"expected a non-empty list of values, got {values!r}")
        if _is_bundle_key(key):
            values = [_assignment(path, f"{where}[{i}]", v, allow_name=True) for i, v in enumerate(values)]
            names = [v.get(NAME_KEY) for v in values]
            if None in names or len(set(names)) != len(names):
                raise _error(path, where, "a bundle axis (key without a dot) needs a unique `name` in each value")
        elif key == CONFIG_KEY:
            values = [None if v is None else _config_path(v, path, f"{where}[{i}]") for i, v in enumerate(values)]
        axes[key] = list(values)
    return axes


def _entries(path: Path, key: str, raw: Any, allow_name: bool) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _error(path, key, "expected a list of mappings")
    return [_assignment(path, f"{key}[{i}]", item, allow_name) for i, item in enumerate(raw)]


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

    def check(ok: Any, key: str, message: str) -> None:
        if not ok:
            raise _error(path, key, message)

    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    check(not unknown, unknown[0] if unknown else "", f"unknown key; valid keys: {', '.join(SWEEP_KEYS)}")
    v = {key: raw.get(key) for key in SWEEP_KEYS}  # validated and normalised in place, then the Sweep's fields
    v["configs"] = [v["configs"]] if isinstance(v["configs"], str) else v["configs"] or []
    check(isinstance(v["configs"], list) and v["configs"], "configs", "expected a non-empty list of base config files")
    check(v["include"] is None or v["runs"] is None, "runs", "give `include` or its alias `runs`, not both")
    name = v["name"] = str(v["name"] or path.stem)
    check(re.match(r"^[A-Za-z0-9._-]+$", name), "name", f"{name!r} must be path-safe (letters, digits, . _ -)")
    seeds = v["seeds"] = v["seeds"] if isinstance(v["seeds"], list) else [v["seeds"]]
    ok = seeds == [None] and raw.get("seeds") is None or seeds and all(type(s) is int for s in seeds)
    check(ok, "seeds", f"expected a list of integers, got {seeds!r}")
    check(len(set(seeds)) == len(seeds), "seeds", f"duplicate seeds in {seeds!r}")
    v["test"] = None if v["test"] == "auto" else v["test"]
    check(v["test"] is None or isinstance(v["test"], bool), "test", f"expected auto, true or false, got {v['test']!r}")
    v["command"] = shlex.split(v["command"]) if isinstance(v["command"], str) else v["command"]
    v["command"] = list(DEFAULT_COMMAND) if v["command"] is None else v["command"]
    ok = isinstance(v["command"], list) and v["command"] and all(isinstance(part, str) for part in v["command"])
    check(ok, "command", f"expected a non-empty list of strings, got {v['command']!r}")
    v["env"] = {} if v["env"] is None else v["env"]
    ok = isinstance(v["env"], Mapping) and all(isinstance(k, str) and re.match(r"^[A-Za-z_]\w*$", k) for k in v["env"])
    check(ok, "env", f"expected a mapping of environment variable names to values, got {v['env']!r}")
    v["env"] = {key: cli_value(value) for key, value in v["env"].items()}
    ok = v["timeout"] is None or type(v["timeout"]) in (int, float)
    check(ok, "timeout", f"expected a number of seconds, got {v['timeout']!r}")
    check(v["metric"] is None or isinstance(v["metric"], str), "metric", f"expected a name, got {v['metric']!r}")
    v["pruner"] = str(v["pruner"] or "none")
    check(v["pruner"] in PRUNERS, "pruner", f"{v['pruner']!r} is not one of {', '.join(PRUNERS)}")
    v["experiment"] = str(v["experiment"] or "lit_hyperet")
    v["output_dir"] = str(v["output_dir"] or f"outputs/sweeps/{name}")
    v["configs"] = [_config_path(c, path, f"configs[{i}]") for i, c in enumerate(v["configs"])]
    v["axes"] = _axes(path, v["axes"])
    v["exclude"] = _entries(path, "exclude", v["exclude"], allow_name=False)
    v["include"] = _entries(path, "include", v["runs"] if v["include"] is None else v["include"], allow_name=True)
    v["overrides"] = _assignment(path, "overrides", v["overrides"] or {}, allow_name=False)
    check(CONFIG_KEY not in v["overrides"], "overrides.config", "put fixed config files in `configs`")
    for key in (key for entry in v["exclude"] for key in entry):
        check(key in v["axes"], "exclude", f"{key!r} is not an axis (axes: {', '.join(v['axes']) or 'none'})")
    v["cli_overrides"], v["cli_configs"] = dict(parse_override(text) for text in overrides), list(extra_configs)
    for config in (config for config in v["cli_configs"] if not Path(config).is_file()):
        raise SweepError(f"--config {config}: file not found")
    v["include"] = v["include"] or ([] if v["axes"] else [{NAME_KEY: "default"}])
    return Sweep(path=path, **{f.name: v[f.name] for f in fields(Sweep) if f.name != "path"})


def _named(value: Any) -> Any:
    return value[NAME_KEY] if isinstance(value, dict) and NAME_KEY in value else value


def _grid(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _include_combinations(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An include entry; list values are alternatives (crossed), named after the entry and the varying values."""
    fixed = {k: v for k, v in entry.items() if k != NAME_KEY}
    varying = [k for k, v in fixed.items() if isinstance(v, list) and len(v) > 1]
    combos = _grid({k: (v if isinstance(v, list) else [v]) for k, v in fixed.items()})
    if NAME_KEY in entry:
        for combo in combos:
            combo[NAME_KEY] = ",".join([entry[NAME_KEY]] + [_label_part(k, combo[k], {}) for k in varying])
    return combos


def aliases(keys: Iterable[str]) -> dict[str, str]:
    """Short labels for dotted keys: the last segment, longer where two keys would collide (``init_args`` left out)."""
    keys = list(dict.fromkeys(keys))
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            alias = ".".join(p for p in parts[-n:] if p != "init_args") or parts[-1]
            if not [k for k in keys if k != key and ".".join(k.split(".")[-n:]).replace("init_args.", "") == alias]:
                break
        out[key] = alias
    return out


def _label_part(key: str, value: Any, short: dict[str, str]) -> str:
    if isinstance(value, dict) and NAME_KEY in value:
        return f"{key}={slug(value[NAME_KEY])}"
    return f"{short.get(key, key.split('.')[-1])}={slug(value)}"


def _assignments(values: dict[str, Any]) -> tuple[list[str], list[tuple[str, Any]]]:
    configs: list[str] = []
    pairs: list[tuple[str, Any]] = []
    for key, value in values.items():
        if key == CONFIG_KEY:
            configs += [] if value is None else [value]
        elif isinstance(value, dict) and NAME_KEY in value and _is_bundle_key(key):
            sub_configs, sub_pairs = _assignments(value)
            configs, pairs = configs + sub_configs, pairs + sub_pairs
        elif key != NAME_KEY:
            pairs.append((key, value))
    return configs, pairs


def spread(grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid reordered so that any prefix (``--max-trials``) covers it evenly: each next configuration shares the
    fewest axis values with those already picked, ties in file order."""
    left, picked, seen = list(grid), [], []
    while left:
        best = min(left, key=lambda values: sum(len({f"{k}={v}" for k, v in values.items()} & s) for s in seen))
        left.remove(best)
        picked.append(best)
        seen.append({f"{k}={v}" for k, v in best.items()})
    return picked


def dir_name(name: str) -> str:
    """A trial's directory: its name with ``=`` as ``-`` and anything else outside ``[A-Za-z0-9._-]`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("=", "-")).strip("_")


def expand(sweep: Sweep) -> list[Trial]:
    """All trials in run order: each seed over the include entries, then the grid minus exclusions, spread."""
    included = [combo for entry in sweep.include for combo in _include_combinations(entry)]

    def excluded(values: dict[str, Any]) -> bool:  # an exclude entry matches it on every key (bundles by name)
        return any(
            all(_named(values[k]) in (w if isinstance(w, list) else [w]) for k, w in e.items()) for e in sweep.exclude
        )

    grid = [combo for combo in _grid(sweep.axes) if not excluded(combo)] if sweep.axes else []
    short = aliases(k for combo in included + grid for k in combo if k != NAME_KEY)

    def label(values: dict[str, Any]) -> str:
        return str(values.get(NAME_KEY, ",".join(_label_part(k, v, short) for k, v in values.items()))) or "default"

    labels: dict[str, dict[str, Any]] = {}
    for values in included + spread(grid):
        if label(values) in labels:
            raise SweepError(
                f"sweep {sweep.path}: two configurations share the name {label(values)!r}: "
                f"{labels[label(values)]} and {values} (give include entries a unique `name`)"
            )
        labels[label(values)] = values
    order = {label(values): i for i, values in enumerate(included + grid)}
    trials: list[Trial] = []
    for seed, (config, values) in itertools.product(sweep.seeds, labels.items()):
        name = config + ("" if seed is None else f",seed={seed}")
        out = f"{sweep.output_dir}/{dir_name(name)}"
        configs, pairs = _assignments(values)
        pairs += [] if seed is None else [(SEED_KEY, seed)]
        pairs += [("trainer.default_root_dir", out), ("checkpoint.dirpath", f"{out}/checkpoints")]
        pairs = [*sweep.overrides.items(), *pairs, *sweep.cli_overrides.items()]
        configs = [*sweep.configs, *configs, *sweep.cli_configs]
        named = {k: _named(v) for k, v in values.items()}
        trials.append(Trial(len(trials), name, config, seed, named, tuple(configs), tuple(pairs), out, order[config]))
    return trials


def axis_tags(trial: Trial) -> dict[str, str]:
    """``axis.<key>``: the trial's value on each axis (bundles and config files by name)."""
    return {
        f"axis.{key}": slug(value) if key == CONFIG_KEY else cli_value(value)
        for key, value in trial.values.items()
        if key != NAME_KEY
    }


def command_line(
    sweep: Sweep, trial: Trial, stage: str = "fit", run_id: str | None = None, extra: Iterable[str] = ()
) -> list[str]:
    """``python -m lit_hyperet <stage> --config … --key value …`` for one trial (``python``: this interpreter)."""
    cmd = [sys.executable if part == "python" else part for part in sweep.command] + [stage]
    cmd += [arg for path in trial.configs for arg in ("--config", path)]
    cmd += [arg for key, value in trial.assignments for arg in cli_args(key, value)]
    cmd += cli_args(f"{LOGGER_KEY}.experiment_name", sweep.experiment) + cli_args(f"{LOGGER_KEY}.run_name", trial.name)
    return cmd + (cli_args(f"{LOGGER_KEY}.run_id", run_id) if run_id else []) + list(extra)


def shell_line(sweep: Sweep, trial: Trial) -> str:
    """The dry-run line of a trial: ``fit``, then ``&& … test --ckpt_path …`` when a test stage applies."""
    env = "".join(f"{k}={shlex.quote(v)} " for k, v in sweep.env.items())
    line = env + shlex.join(command_line(sweep, trial, "fit"))
    if sweep.test:
        ckpt = ["--ckpt_path", f"{trial.output_dir}/checkpoints/last.ckpt"]
        line += " && " + env + shlex.join(command_line(sweep, trial, "test", extra=ckpt))
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
