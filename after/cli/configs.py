"""Options generated from the settings dataclasses of `after.config`.

A setting that the command line offers is described once, as a `Spec` (its spelling and help)
keyed by the dataclass field it sets (`after.cli.options`); its type and default are the field's.
`with_configs` gives a command the options of a `Group` of such fields in place of one parameter
annotated with the dataclass, and calls the command with the dataclass built from what was typed:

    @app.command()
    @with_configs(config=Group(TrainConfig, TRAIN_OPTIONS, FINE_TUNING))
    def train(manifest: Path = ..., *, config: TrainConfig, device: str = ...) -> None: ...

Typer reads the options from the signature, so `after train --help` lists them like any other.
The dataclass checks the values (`__post_init__`); its `SettingsError` comes out naming the
options as they were typed ("--epochs 0: give 1 or more").
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import shlex
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import typer

from after.errors import AfterError, SettingsError

Command = Callable[..., None]
KEYWORD = inspect.Parameter.KEYWORD_ONLY  # Typer passes every option by name
Settings = TypeVar("Settings")


@dataclass(frozen=True)
class Spec:
    """How the command line spells and explains one setting."""

    help: str
    # Typer's spellings, e.g. ("--freeze-cnn/--train-cnn",); none: --field-name (a flag:
    # --field-name/--no-field-name).
    flags: tuple[str, ...] = ()
    # From the text typed to the setting's value (the option is then text), e.g. a comma list
    # to a tuple; `show` turns the setting's default into the text shown as the default.
    parse: Callable[[str], Any] | None = None
    show: Callable[[Any], str] | None = None

    def flag(self, name: str) -> str:
        """The option's first spelling (for messages)."""
        return self.flags[0].split("/")[0] if self.flags else option_name(name)


@dataclass(frozen=True)
class Group:
    """The options of one settings dataclass that a command takes: `fields`, each with its
    `Spec` in `specs`; `shared` fields are set by another option of the same command (run's
    --seed sets the training and the active-learning seed) rather than by an option of their
    own here."""

    settings: type[Any]
    specs: Mapping[str, Spec]
    fields: tuple[str, ...]
    shared: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        known = {f.name for f in dataclasses.fields(self.settings)}
        unknown = [name for name in (*self.fields, *self.shared) if name not in known]
        unspecified = [name for name in self.fields if name not in self.specs]
        if unknown or unspecified:
            raise TypeError(f"{self.settings.__name__}: no field {unknown}, no Spec {unspecified}")

    def parameters(self) -> list[inspect.Parameter]:
        """The options, as parameters Typer reads: type and default from the dataclass."""
        hints = typing.get_type_hints(self.settings)
        defaults = {f.name: f.default for f in dataclasses.fields(self.settings)}
        out = []
        for name in self.fields:
            spec = self.specs[name]
            kind = str if spec.parse else _cli_type(hints[name])
            default = spec.show(defaults[name]) if spec.show else defaults[name]
            option = typer.Option(default, *spec.flags, help=spec.help)
            out.append(inspect.Parameter(name, KEYWORD, default=option, annotation=kind))
        return out

    def build(self, typed: Mapping[str, Any]) -> Any:
        """The dataclass from the typed options (and the shared ones), checked by it."""
        values = {name: typed[name] for name in (*self.fields, *self.shared)}
        for name in self.fields:
            parse = self.specs[name].parse
            if parse is not None:
                values[name] = parse(values[name])
        try:
            return self.settings(**values)
        except SettingsError as e:
            raise as_option_error(e, self.specs, typed) from None


def option_name(field: str) -> str:
    """`--field-name`, as Typer spells a parameter `field_name`."""
    return "--" + field.replace("_", "-")


def as_option_error(
    e: SettingsError, specs: Mapping[str, Spec], typed: Mapping[str, Any]
) -> AfterError:
    """`e` naming each setting's option with the value as typed: "--epochs 0: give 1 or more"."""
    problems = []
    for name, (value, need) in e.problems.items():
        spec = specs.get(name)
        flag = spec.flag(name) if spec else option_name(name)
        shown = typed.get(name, value)
        problems.append(f"{flag} {shlex.quote(str(shown))}: {need}")
    return AfterError("; ".join(problems))


def replace(settings: Settings, specs: Mapping[str, Spec], **changes: Any) -> Settings:
    """`dataclasses.replace`, with a `SettingsError` naming the options (see `as_option_error`)."""
    try:
        return dataclasses.replace(settings, **changes)  # type: ignore[type-var]
    except SettingsError as e:
        raise as_option_error(e, specs, changes) from None


def with_configs(**groups: Group) -> Callable[[Command], Command]:
    """Give the command the options of each group in place of its keyword-only parameter of the
    same name (annotated with the group's dataclass), and call it with the dataclass built from
    them. Every other parameter stays as the command declares it."""

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        generated: set[str] = set()
        parameters: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            group = groups.get(param.name)
            if group is None:
                parameters.append(param.replace(kind=KEYWORD))
                continue
            if param.annotation is not group.settings or param.kind is not KEYWORD:
                raise TypeError(f"{command.__name__}: declare *, {param.name}: {group.settings}")
            options = group.parameters()
            generated |= {p.name for p in options}
            parameters += options
        names = [p.name for p in parameters]
        if missing := set(groups) - set(signature.parameters):
            raise TypeError(f"{command.__name__}: no parameter {sorted(missing)}")
        if len(set(names)) != len(names):
            raise TypeError(f"{command.__name__}: an option is declared twice in {names}")

        @functools.wraps(command)
        def invoke(**typed: Any) -> None:
            settings = {name: group.build(typed) for name, group in groups.items()}
            own = {k: v for k, v in typed.items() if k not in generated}
            command(**own, **settings)

        invoke.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        invoke.__annotations__ = {p.name: p.annotation for p in parameters}
        return invoke

    return decorate


def _cli_type(hint: Any) -> Any:
    """What Typer parses for a field of type `hint`: a Literal's choices as text (the
    dataclass checks them, and says which it takes)."""
    if typing.get_origin(hint) is typing.Literal:
        return str
    return hint
