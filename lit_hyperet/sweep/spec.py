"""Sweep files: loading, grid expansion in a spread-out order, per-trial command lines, the digest naming a study.

A sweep file is YAML::

    name: demo_ablation              # default: the file's stem
    experiment: lit_hyperet          # MLflow experiment of the parent and child runs
    configs: [configs/demo.yaml]     # base --config files, in order
    overrides: {trainer.max_steps: 20}   # fixed dotted CLI keys for every trial
    axes:                            # grid: the product of the value lists
      model.init_args.hyperet.variant: [diagonal, banded]
      config: [configs/scienceqa/diagonal.yaml, null]     # extra --config file (null: none)
      encoder:                       # a *bundle* axis (no dot in the key): each value sets several keys
        - {name: clip, model.init_args.model.init_args.vision: clip}
    exclude: [{model.init_args.hyperet.variant: full, encoder: clip}]   # partial assignments to drop
    include: [{name: baseline, model.init_args.hyperet: null}]          # extra configurations (alias: runs)
    seeds: [0, 1]                    # -> --seed_everything; every configuration runs once per seed
    metric: val/Avg                  # main metric of the report (default: test/Avg, else val/Avg)
    test: auto                       # run `test` from the last checkpoint: auto (data has a test split) | true | false
    output_dir: outputs/sweeps/demo_ablation   # default outputs/sweeps/<name>
    command: [python, -m, lit_hyperet]          # launcher (python = this interpreter); e.g. torchrun/srun wrappers
    timeout: 3600                    # seconds per stage (optional)
    env: {OMP_NUM_THREADS: "1"}      # extra environment variables of the trials
    pruner: median                   # stop trials whose metric falls behind the median of others (default: none)

Include entries map keys to single values, except that a list is a list of alternatives (crossed like axes); write a
list-valued CLI value as ``[[a, b]]`` there and in axes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lit_hyperet.user_errors import UserError

#: Keys a sweep file may hold.
SWEEP_KEYS = tuple(
    "name experiment description configs overrides axes exclude include runs seeds metric test output_dir command "
    "timeout env pruner".split()
)
PRUNERS = ("none", "median")
#: Top-level CLI keys without a dot (anything else without a dot in ``axes`` is a bundle axis).
PLAIN_TOP_LEVEL_KEYS = ("seed_everything", "ckpt_path")
CONFIG_KEY = "config"
NAME_KEY = "name"
SEED_KEY = "seed_everything"
DEFAULT_EXPERIMENT = "lit_hyperet"
DEFAULT_COMMAND = ("python", "-m", "lit_hyperet")
LOGGER_KEY = "trainer.logger.init_args"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.+-]*$")


class SweepError(UserError):
    """An invalid sweep file or override (the message names the file and key)."""


@dataclass
class Sweep:
    """A parsed sweep file (see the module docstring for the format)."""

    path: Path
    name: str
    experiment: str
    configs: list[str]
    axes: dict[str, list[Any]]
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=lambda: [None])
    overrides: dict[str, Any] = field(default_factory=dict)
    cli_overrides: dict[str, Any] = field(default_factory=dict)
    cli_configs: list[str] = field(default_factory=list)
    metric: str | None = None
    test: str = "auto"
    output_dir: str = ""
    command: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    pruner: str = "none"

    def exclude_keys(self) -> list[str]:
        """Every key named in ``exclude``."""
        return [key for entry in self.exclude for key in entry]


@dataclass(frozen=True)
class Trial:
    """One trial: a configuration (assignments) at one seed; ``index`` is its place in the spread-out run order."""

    index: int
    name: str
    config_name: str
    seed: int | None
    values: dict[str, Any]
    configs: tuple[str, ...]
    assignments: tuple[tuple[str, Any], ...]
    output_dir: str
    test: bool | None  # None: decided after fit from the config the CLI resolved ("auto")

    @property
    def checkpoint_dir(self) -> str:
        """Where the trial's ModelCheckpoint writes."""
        return f"{self.output_dir}/checkpoints"


# ------------------------------------------------------------------------------------------------ values


def cli_value(value: Any) -> str:
    """A YAML value as jsonargparse reads it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
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
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise SweepError(f"{source}: {key}: cannot parse value {raw!r}: {err}") from err
    return key, value


def slug(value: Any) -> str:
    """A short, path-safe rendering of a value for trial names."""
    if isinstance(value, str) and ("/" in value or value.endswith((".yaml", ".yml"))):
        value = Path(value).stem if value.endswith((".yaml", ".yml")) else Path(value).name
    text = cli_value(value)
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[:40] or "_"


# ------------------------------------------------------------------------------------------------ loading


def _error(path: Path, key: str, message: str) -> SweepError:
    return SweepError(f"sweep {path}: {key}: {message}")


def _find_file(name: str, sweep_path: Path) -> Path | None:
    """A config path as given (relative to the working dir), else relative to the sweep file or its parent dir."""
    candidates = [Path(name)]
    if not Path(name).is_absolute():
        candidates += [sweep_path.parent / name, sweep_path.parent.parent / name]
    return next((c for c in candidates if c.is_file()), None)


def _config_path(name: Any, sweep_path: Path, key: str) -> str:
    if not isinstance(name, str) or not name:
        raise _error(sweep_path, key, f"expected a config file path, got {name!r}")
    found = _find_file(name, sweep_path)
    if found is None:
        raise _error(sweep_path, key, f"config file {name!r} not found (tried the working dir and next to the sweep)")
    return str(found)


def _check_key(path: Path, where: str, key: Any) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise _error(path, where, f"{key!r} is not a dotted CLI key")
    return key


def _is_bundle_key(key: str) -> bool:
    return "." not in key and key != CONFIG_KEY and key not in PLAIN_TOP_LEVEL_KEYS


def _check_assignment(path: Path, where: str, mapping: Any, allow_name: bool) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        raise _error(path, where, f"expected a mapping of dotted CLI keys to values, got {mapping!r}")
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if key == NAME_KEY and allow_name:
            out[key] = str(value)
            continue
        key = _check_key(path, where, key)
        if key == SEED_KEY:
            raise _error(path, f"{where}.{key}", "use the sweep's `seeds` list for seeds")
        if key == CONFIG_KEY and isinstance(value, list):  # alternatives (include entries)
            value = [None if v is None else _config_path(v, path, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        elif key == CONFIG_KEY and value is not None:
            value = _config_path(value, path, f"{where}.{key}")
        out[key] = value
    return out


def _load_axes(path: Path, raw: Any) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _error(path, "axes", "expected a mapping of dotted CLI keys to value lists")
    axes: dict[str, list[Any]] = {}
    for key, values in raw.items():
        key = _check_key(path, "axes", key)
        where = f"axes.{key}"
        if key == SEED_KEY:
            raise _error(path, where, "use the sweep's `seeds` list for seeds")
        if not isinstance(values, list) or not values:
            raise _error(path, where, f"expected a non-empty list of values, got {values!r}")
        if _is_bundle_key(key):
            bundles = [_check_assignment(path, f"{where}[{i}]", v, allow_name=True) for i, v in enumerate(values)]
            names = [b.get(NAME_KEY) for b in bundles]
            if None in names or len(set(names)) != len(names):
                raise _error(path, where, "a bundle axis (key without a dot) needs a unique `name` in each value")
            axes[key] = bundles
        elif key == CONFIG_KEY:
            axes[key] = [None if v is None else _config_path(v, path, f"{where}[{i}]") for i, v in enumerate(values)]
        else:
            axes[key] = list(values)
    return axes


def _load_list_of_assignments(path: Path, key: str, raw: Any, allow_name: bool) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _error(path, key, "expected a list of mappings")
    return [_check_assignment(path, f"{key}[{i}]", item, allow_name) for i, item in enumerate(raw)]


def _load_seeds(path: Path, raw: Any) -> list[int | None]:
    if raw is None:
        return [None]
    raw = raw if isinstance(raw, list) else [raw]
    if not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        raise _error(path, "seeds", f"expected a list of integers, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise _error(path, "seeds", f"duplicate seeds in {raw!r}")
    return list(raw)


def _load_test(path: Path, raw: Any) -> str:
    if raw is None or raw == "auto":
        return "auto"
    if isinstance(raw, bool):
        return "always" if raw else "never"
    raise _error(path, "test", f"expected auto, true or false, got {raw!r}")


def _load_command(path: Path, raw: Any) -> list[str]:
    if raw is None:
        return list(DEFAULT_COMMAND)
    if isinstance(raw, str):
        raw = shlex.split(raw)
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) for p in raw):
        raise _error(path, "command", f"expected a non-empty list of strings, got {raw!r}")
    return list(raw)


def _load_env(path: Path, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and re.match(r"^[A-Za-z_]\w*$", k) for k in raw):
        raise _error(path, "env", f"expected a mapping of environment variable names to values, got {raw!r}")
    return {k: cli_value(v) for k, v in raw.items()}


def load_sweep(path: str | Path, overrides: Iterable[str] = (), extra_configs: Iterable[str] = ()) -> Sweep:
    """Read and validate a sweep file; ``overrides`` (``key=value``) and ``extra_configs`` (config files placed after
    each configuration's own) apply to every trial."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"sweep {path}: invalid YAML: {err}") from err
    if not isinstance(raw, Mapping):
        raise SweepError(f"sweep {path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise _error(path, unknown[0], f"unknown key; valid keys: {', '.join(SWEEP_KEYS)}")
    configs = raw.get("configs") or []
    configs = [configs] if isinstance(configs, str) else configs
    if not isinstance(configs, list) or not configs:
        raise _error(path, "configs", "expected a non-empty list of base config files")
    if raw.get("include") is not None and raw.get("runs") is not None:
        raise _error(path, "runs", "give `include` or its alias `runs`, not both")
    name = str(raw.get("name") or path.stem)
    if not re.match(r"^[A-Za-z0-9._-]+$", name):
        raise _error(path, "name", f"{name!r} must be path-safe (letters, digits, . _ -)")
    sweep = Sweep(
        path=path,
        name=name,
        experiment=str(raw.get("experiment") or DEFAULT_EXPERIMENT),
        configs=[_config_path(c, path, f"configs[{i}]") for i, c in enumerate(configs)],
        axes=_load_axes(path, raw.get("axes")),
        exclude=_load_list_of_assignments(path, "exclude", raw.get("exclude"), allow_name=False),
        include=_load_list_of_assignments(path, "include", raw.get("include", raw.get("runs")), allow_name=True),
        seeds=_load_seeds(path, raw.get("seeds")),
        overrides=_check_assignment(path, "overrides", raw.get("overrides") or {}, allow_name=False),
        metric=raw.get("metric"),
        test=_load_test(path, raw.get("test")),
        output_dir=str(raw.get("output_dir") or f"outputs/sweeps/{name}"),
        command=_load_command(path, raw.get("command")),
        timeout=float(raw["timeout"]) if raw.get("timeout") is not None else None,
        env=_load_env(path, raw.get("env")),
        pruner=str(raw.get("pruner") or "none"),
    )
    if sweep.pruner not in PRUNERS:
        raise _error(path, "pruner", f"{sweep.pruner!r} is not one of {', '.join(PRUNERS)}")
    if CONFIG_KEY in sweep.overrides:
        raise _error(path, "overrides.config", "put fixed config files in `configs`")
    for key in sweep.exclude_keys():
        if key not in sweep.axes:
            raise _error(path, "exclude", f"{key!r} is not an axis (axes: {', '.join(sweep.axes) or 'none'})")
    for text in overrides:
        key, value = parse_override(text)
        sweep.cli_overrides[key] = value
    for name in extra_configs:
        if not Path(name).is_file():
            raise SweepError(f"--config {name}: file not found")
        sweep.cli_configs.append(name)
    if not sweep.axes and not sweep.include:
        sweep.include = [{NAME_KEY: "default"}]
    return sweep


# ------------------------------------------------------------------------------------------------ expansion


def _excluded(values: dict[str, Any], exclude: list[dict[str, Any]]) -> bool:
    def matches(key: str, wanted: Any) -> bool:
        got = values[key]
        if isinstance(got, dict) and NAME_KEY in got:  # bundle axis: match by name
            got = got[NAME_KEY]
        return got in (wanted if isinstance(wanted, list) else [wanted])

    return any(all(matches(k, v) for k, v in entry.items()) for entry in exclude)


def _grid(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in keys))]


def _include_combinations(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An include entry; list values are alternatives (crossed)."""
    name = entry.get(NAME_KEY)
    fixed = {k: v for k, v in entry.items() if k != NAME_KEY}
    varying = [k for k, v in fixed.items() if isinstance(v, list) and len(v) > 1]
    out = []
    for combo in _grid({k: (v if isinstance(v, list) else [v]) for k, v in fixed.items()}):
        if name is not None:
            combo[NAME_KEY] = ",".join([name] + [_label_part(k, combo[k], {}) for k in varying])
        out.append(combo)
    return out


def _aliases(keys: Iterable[str]) -> dict[str, str]:
    """Short labels for dotted keys: the last segment, longer where two keys would collide."""
    keys = list(dict.fromkeys(keys))
    aliases: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            alias = ".".join(p for p in parts[-n:] if p != "init_args") or parts[-1]
            clash = [k for k in keys if k != key and ".".join(k.split(".")[-n:]).replace("init_args.", "") == alias]
            if not clash:
                break
        aliases[key] = alias
    return aliases


def _label_part(key: str, value: Any, aliases: dict[str, str]) -> str:
    if isinstance(value, dict) and NAME_KEY in value:
        return f"{key}={slug(value[NAME_KEY])}"
    return f"{aliases.get(key, key.split('.')[-1])}={slug(value)}"


def _assignments(values: dict[str, Any]) -> tuple[list[str], list[tuple[str, Any]]]:
    """Extra config files and ``(key, value)`` CLI assignments of one configuration, in order."""
    configs: list[str] = []
    pairs: list[tuple[str, Any]] = []
    for key, value in values.items():
        if key == NAME_KEY:
            continue
        if key == CONFIG_KEY:
            configs += [] if value is None else [value]
        elif isinstance(value, dict) and NAME_KEY in value and _is_bundle_key(key):
            sub_configs, sub_pairs = _assignments(value)
            configs += sub_configs
            pairs += sub_pairs
        else:
            pairs.append((key, value))
    return configs, pairs


def spread(grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid's configurations reordered so that any prefix covers it evenly: each next one differs most from those
    already picked (fewest shared axis values), ties in file order. ``--max-trials`` and partial runs take prefixes."""
    left, picked = list(grid), []
    seen: list[set[str]] = []
    while left:

        def shared(values: dict[str, Any]) -> int:
            items = {f"{k}={v}" for k, v in values.items()}
            return sum(len(items & other) for other in seen)

        best = min(left, key=shared)
        left.remove(best)
        picked.append(best)
        seen.append({f"{k}={v}" for k, v in best.items()})
    return picked


def configurations(sweep: Sweep) -> list[dict[str, Any]]:
    """The sweep's configurations (without seeds): include entries first, then the grid minus exclusions, spread."""
    combos = [c for entry in sweep.include for c in _include_combinations(entry)]
    if sweep.axes:
        combos += spread([c for c in _grid(sweep.axes) if not _excluded(c, sweep.exclude)])
    return combos


def dir_name(name: str) -> str:
    """A trial's directory: its name with ``=`` as ``-`` and anything else outside ``[A-Za-z0-9._-]`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("=", "-")).strip("_")


def expand(sweep: Sweep) -> list[Trial]:
    """All trials, in run order: each seed over every configuration (so a prefix spans configurations first)."""
    combos = configurations(sweep)
    aliases = _aliases([k for c in combos for k in c if k != NAME_KEY])
    labels: dict[str, dict[str, Any]] = {}
    for values in combos:
        label = (
            str(values[NAME_KEY])
            if NAME_KEY in values
            else ",".join(_label_part(k, v, aliases) for k, v in values.items())
        )
        if label in labels:
            raise SweepError(
                f"sweep {sweep.path}: two configurations share the name {label!r}: "
                f"{labels[label]} and {values} (give include entries a unique `name`)"
            )
        labels[label] = values
    trials: list[Trial] = []
    for seed in sweep.seeds:
        for label, values in labels.items():
            trials.append(_make_trial(sweep, len(trials), label or "default", seed, values))
    return trials


def _make_trial(sweep: Sweep, index: int, label: str, seed: int | None, values: dict[str, Any]) -> Trial:
    extra_configs, pairs = _assignments(values)
    name = label if seed is None else f"{label},seed={seed}"
    assignments = list(sweep.overrides.items()) + pairs
    if seed is not None:
        assignments.append((SEED_KEY, seed))
    output_dir = f"{sweep.output_dir}/{dir_name(name)}"
    assignments += [("trainer.default_root_dir", output_dir), ("checkpoint.dirpath", f"{output_dir}/checkpoints")]
    assignments += list(sweep.cli_overrides.items())
    return Trial(
        index=index,
        name=name,
        config_name=label,
        seed=seed,
        values={k: (v[NAME_KEY] if isinstance(v, dict) and NAME_KEY in v else v) for k, v in values.items()},
        configs=tuple(sweep.configs + extra_configs + sweep.cli_configs),
        assignments=tuple(assignments),
        output_dir=output_dir,
        test={"always": True, "never": False}.get(sweep.test),
    )


# ------------------------------------------------------------------------------------------------ commands


def launcher(sweep: Sweep) -> list[str]:
    """The sweep's base command with ``python`` replaced by this interpreter."""
    return [sys.executable if part == "python" else part for part in sweep.command]


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
    """``python -m lit_hyperet <stage> --config … --key value …`` for one trial.

    Order: base and extra ``--config`` files, the sweep's ``overrides``, the configuration's values, the seed, the
    trial's output dirs, ``--override`` values, then the MLflow logger's experiment and run name (and the run id of
    the child run when the sweep created one), then ``extra`` arguments (the checkpoint, the pruning callback).
    """
    cmd = launcher(sweep) + [stage]
    for path in trial.configs:
        cmd += ["--config", path]
    for key, value in trial.assignments:
        cmd += cli_args(key, value)
    cmd += cli_args(f"{LOGGER_KEY}.experiment_name", sweep.experiment)
    cmd += cli_args(f"{LOGGER_KEY}.run_name", trial.name)
    if run_id is not None:
        cmd += cli_args(f"{LOGGER_KEY}.run_id", run_id)
    return cmd + list(extra)


def shell_line(sweep: Sweep, trial: Trial) -> str:
    """The dry-run line of a trial: its fit command, then ``&& … test --ckpt_path …`` when a test stage applies
    (each prefixed with the sweep's ``env`` assignments)."""
    env = "".join(f"{k}={shlex.quote(v)} " for k, v in sweep.env.items())
    line = env + shlex.join(command_line(sweep, trial, "fit"))
    if trial.test:
        ckpt = ["--ckpt_path", f"{trial.checkpoint_dir}/last.ckpt"]
        line += " && " + env + shlex.join(command_line(sweep, trial, "test", extra=ckpt))
    return line


def definition_digest(sweep: Sweep, trials: list[Trial]) -> str:
    """8 hex naming the study: the trials' command lines and the bytes of every config file they read. A changed
    setting is a new study (nothing stale is skipped); the study of the same definition resumes."""
    digest = hashlib.sha256()
    for trial in sorted(trials, key=lambda t: t.name):
        digest.update(json.dumps([trial.name, list(trial.configs), trial.assignments], default=str).encode())
    for path in sorted({c for t in trials for c in t.configs}):
        digest.update(Path(path).read_bytes())
    digest.update(json.dumps([sweep.test, sweep.metric, sweep.pruner, sweep.command]).encode())
    return digest.hexdigest()[:8]
