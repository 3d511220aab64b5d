"""Tasks declared in YAML (a task file, or the run config's ``data.task_definitions``), checked and added to
a run's `TaskRegistry`.

`declare` checks a declaration (`declaration.parse`) and adds its task to the registry given, once: the same
declaration again is a no-op. The registry keeps the canonical declarations: run folders and checkpoints
store them, so a model trained on a declared task loads where the task file is not. Nothing here touches
the process-wide tasks. docs/extending.md gives the format.
"""

from __future__ import annotations

from pathlib import Path

from hyperpelt.errors import UserError
from hyperpelt.tasks.declaration import parse
from hyperpelt.tasks.registry import Task, TaskRegistry
from hyperpelt.yamlfiles import parse_yaml


def declare(raw, where: str, base: str | Path | None = None, position: str = "", *,
            into: TaskRegistry) -> Task:
    """Check one declaration (see `parse`) and add its task to ``into``; the same declaration again is a
    no-op, another one of the same name (or a built-in task's name) an error."""
    task, decl = parse(raw, where, base, position)
    known = into.declaration(task.name)
    if known is not None:
        if known != decl:
            raise UserError(f"{where}: task '{task.name}': name: a different task '{task.name}' is declared "
                            f"in {into.declared_in(task.name)}")
        return into.get(task.name)
    if task.name in into.names():
        raise UserError(f"{where}: task '{task.name}': name: '{task.name}' is a built-in task; "
                        f"give yours another name")
    into.add(task, decl, where)
    return task


def read_task_file(path: str | Path) -> list[tuple[object, str]]:
    """(declaration, position) of each task in a YAML file: one mapping, or ``tasks:`` with a list of them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: task file not found")
    data = parse_yaml(path)
    if isinstance(data, dict) and "tasks" in data and "name" not in data:
        if set(data) != {"tasks"} or not isinstance(data["tasks"], list) or not data["tasks"]:
            raise UserError(f"{path}: tasks: expected a list of task declarations, and no other key")
        return [(item, f": tasks[{i}]") for i, item in enumerate(data["tasks"])]
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a task declaration (a mapping with a name), or tasks: [a list]")
    return [(data, "")]


def declare_file(path: str | Path, *, into: TaskRegistry) -> list[Task]:
    """Add every task of a task file to ``into`` (paths in it are relative to its folder)."""
    return [declare(raw, str(path), Path(path).parent, position, into=into)
            for raw, position in read_task_file(path)]


def declare_all(files, definitions, where: str = "data.task_definitions", *,
                into: TaskRegistry) -> list[dict]:
    """Add a run config's ``data.task_files`` and ``data.task_definitions`` (relative paths from the working
    folder; ``where`` names the definitions in errors) to ``into``; their canonical declarations, each task
    once."""
    for key, value, kind in (("data.task_files", files, str), (where, definitions, dict)):
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, kind) for v in value)):
            raise UserError(f"{key}: expected a list of {'paths' if kind is str else 'mappings'}, "
                            f"got {value!r}")
    tasks = [declare(raw, f"{where}[{i}]", into=into) for i, raw in enumerate(definitions or [])]
    for path in files or []:
        tasks += declare_file(path, into=into)
    return [into.declaration(name) for name in dict.fromkeys(task.name for task in tasks)]


def in_declaration(name: str, err: UserError, registry: TaskRegistry) -> UserError:
    """A data error of task ``name`` naming its declaration and the field at fault when ``registry`` declares
    the task (a `SourceError` knows its field); the error as it is for a built-in task."""
    where = registry.declared_in(name)
    if where is None:
        return err
    field = getattr(err, "field", None)
    return UserError(f"{where}: task '{name}': {f'{field}: ' if field else ''}{err}")
