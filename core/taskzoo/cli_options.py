"""The ``tasks`` command line's options, derived from `taskzoo.options`, the one declaration.

`click_option` turns a `taskzoo.Option` into a click option; `TaskCommandGroup` builds ``tasks run
TASK`` (and check, tune) with the shared options plus the task's own; `RunCommand` builds ``tasks
evaluate``/``predict``/``export``/``serve`` with every installed task's options for the command.
Values are checked by `taskzoo.options`, never by click, so a flag, a --config file and a Python
keyword get the same one-line error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from taskzoo import options as schema
from taskzoo.errors import UserError
from taskzoo.plugins import get_host
from taskzoo.specs import Option, TaskSpec


class OptionType(click.ParamType):
    """Shows the option's type in the help; the value itself is checked by `taskzoo.options.coerce`,
    so a flag, a --config file and a Python keyword get the same one-line error."""

    def __init__(self, option: Option) -> None:
        self.option = option
        self.name = "choice" if option.choices else {int: "integer", float: "float", Path: "path"}.get(option.type, "text")

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        if self.option.choices:
            return "[" + "|".join(self.option.choices) + "]"
        return self.name.upper()


def click_option(option: Option, default: Any = None, *, help_text: str | None = None) -> click.Option:
    """One `taskzoo.Option` as a click option. click's own default stays None, so that a value given
    on the command line can be told from one merged in from a config file or the task's defaults;
    the effective default is shown in the help (0 included)."""
    help_text = help_text or option.help
    if default is not None and default is not False and default != ():
        help_text = f"{help_text}  [default: {default}]"
    if option.type is bool:
        return click.Option([schema.flag(option.name)], is_flag=True, default=None, help=help_text)
    return click.Option([schema.flag(option.name)], type=OptionType(option), default=None,
                        multiple=option.multiple, help=help_text)


class SchemaCommand(click.Command):
    """A command whose unknown options get the same one line as a wrong keyword in Python;
    ``where`` names the task (or the command, for evaluate and predict before a run is read)."""

    def __init__(self, *args: Any, where: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.where = where

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as error:
            help_option = self.get_help_option(ctx)  # named "_click_default_help" by click, not an option of ours
            known = [p.name for p in self.get_params(ctx)
                     if isinstance(p, click.Option) and p.name and p is not help_option]
            raise schema.unknown_option(error.option_name.lstrip("-"), known, self.where) from None


def given_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """The options given on the command line (click leaves the rest None)."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in params.items() if value is not None and value != ()}


class TaskCommandGroup(click.Group):
    """``tasks run TASK`` / ``tasks check TASK``: one subcommand per installed task, built on demand
    with the shared options plus the task's own."""

    def __init__(self, *args: Any, action: str, perform: Callable[[TaskSpec, dict[str, Any]], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.action = action
        self.perform = perform  # what the command does with the task and the options given

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(get_host().tasks())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        try:
            spec = get_host().task(name)
        except UserError:
            return None
        return _task_command(spec, self.action, self.perform)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            known = ", ".join(get_host().tasks()) or "none (see 'tasks plugins')"
            raise click.UsageError(f"unknown task '{name}'; known tasks: {known}", ctx)
        return super().resolve_command(ctx, args)


def _task_command(spec: TaskSpec, action: str, perform: Callable[[TaskSpec, dict[str, Any]], None]) -> click.Command:
    task_defaults = schema.defaults(spec, action)
    params = [click_option(option, task_defaults.get(option.key)) for option in schema.for_command(spec, action)]

    def callback(**params: Any) -> None:
        perform(spec, given_values(params))

    defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
    help_text = f"{spec.description}\n\nData: {', '.join(spec.data_formats)}."
    if defaults:
        help_text += f" Task defaults: {defaults}."
    return SchemaCommand(spec.name, params=params, callback=callback, help=help_text, where=schema.task_where(spec))


class RunCommand(SchemaCommand):
    """``tasks evaluate`` / ``tasks predict``: the shared options and every installed task's options
    for the command (the run's task is known only once --model is read), built when first needed
    so that 'tasks list' loads no plugin code; an option of another task is refused by name."""

    def __init__(self, name: str, callback: Any, help: str) -> None:
        super().__init__(name, callback=callback, help=help, where=f"tasks {name}")
        self._built_for: object = None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        host = get_host()
        if self._built_for is not host:  # the installed tasks are the host's
            self._built_for = host
            # The batch size defaults to twice the run's own, which only the run folder knows.
            self.params = [click_option(option, None if option.name == "batch-size" else option.default)
                           for option in schema.shared(self.name)]
            for option, help_text in _task_options(self.name):
                self.params.append(click_option(option, option.default, help_text=help_text))
        return super().get_params(ctx)


def _task_options(command: str) -> list[tuple[Option, str]]:
    """Each task option of ``command``, once per name, with a help text that names the tasks
    taking it (and says what it means for each, where they differ)."""
    by_name: dict[str, list[tuple[str, Option]]] = {}
    for spec in get_host().tasks().values():
        for option in spec.options:
            if command in option.commands and option.name not in schema.SHARED_NAMES:
                by_name.setdefault(option.name, []).append((spec.name, option))
    found = []
    for name in sorted(by_name):
        owners = by_name[name]
        helps = {option.help for _, option in owners}
        if len(helps) == 1:
            help_text = f"({', '.join(task for task, _ in owners)}) {helps.pop()}"
        else:
            help_text = " ".join(f"({task}) {option.help}" for task, option in owners)
        found.append((owners[0][1], help_text))
    return found
