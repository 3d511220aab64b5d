"""Tasks declared in YAML (a task file, or the run config's ``data.task_definitions``), registered.

`declare` checks a declaration (`declaration.parse`) and registers its task, once: the same declaration
again is a no-op. The canonical declarations are kept here: run folders and checkpoints store them, so a
model trained on a declared task loads where the task file is not. docs/extending.md gives the format.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hyperpelt.errors import UserError
from hyperpelt.tasks.declaration import parse
from hyperpelt.tasks.registry import Task, get_task, register, task_names
from hyperpelt.textfiles import read_text

_DECLARED: dict[str, tuple[dict, str]] = {}  # task name -> (canonical declaration, where it was declared)


def declare(raw, where: str, base: str | Path | None = None, position: str = "") -> Task:
    """Check one declaration (see `parse`) and register its task; the same declaration again is a no-op,
    another one of the same name (or a built-in task's name) an error."""
    task, decl = parse(raw, where, base, position)
    known = _DECLARED.get(task.name)
    if known is not None:
        if known[0] != decl:
            raise UserError(f"{where}: task '{task.name}': name: a different task '{task.name}' is declared "
                            f"in {known[1]}")
        return get_task(task.name)
    if task.name in task_names():
        raise UserError(f"{where}: task '{task.name}': name: '{task.name}' is a built-in task; "
                        f"give yours another name")
    register(task)
    _DECLARED[task.name] = (decl, where)
    return task


def read_task_file(path: str | Path) -> list[tuple[object, str]]:
    """(declaration, position) of each task in a YAML file: one mapping, or ``tasks:`` with a list of them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: task file not found")
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise UserError(f"{path}{f':{mark.line + 1}' if mark else ''}: invalid YAML "
                        f"({getattr(err, 'problem', None) or err})") from None
    if isinstance(data, dict) and "tasks" in data and "name" not in data:
        if set(data) != {"tasks"} or not isinstance(data["tasks"], list) or not data["tasks"]:
            raise UserError(f"{path}: tasks: expected a list of task declarations, and no other key")
        return [(item, f": tasks[{i}]") for i, item in enumerate(data["tasks"])]
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a task declaration (a mapping with a name), or tasks: [a list]")
    return [(data, "")]


def declare_file(path: str | Path) -> list[Task]:
    """Register every task of a task file (paths in it are relative to its folder)."""
    return [declare(raw, str(path), Path(path).parent, position) for raw, position in read_task_file(path)]


def declare_all(files, definitions, where: str = "data.task_definitions") -> list[dict]:
    """Register a run config's ``data.task_files`` and ``data.task_definitions`` (relative paths from the
    working folder; ``where`` names the definitions in errors); their canonical declarations, each task
    once."""
    for key, value, kind in (("data.task_files", files, str), (where, definitions, dict)):
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, kind) for v in value)):
            raise UserError(f"{key}: expected a list of {'paths' if kind is str else 'mappings'}, "
                            f"got {value!r}")
    tasks = [declare(raw, f"{where}[{i}]") for i, raw in enumerate(definitions or [])]
    for path in files or []:
        tasks += declare_file(path)
    return [declaration(name) for name in dict.fromkeys(task.name for task in tasks)]


def declaration(name: str) -> dict | None:
    """The canonical declaration of a declared task; None for a built-in one."""
    known = _DECLARED.get(name)
    return None if known is None else known[0]


def in_declaration(name: str, err: UserError) -> UserError:
    """A data error of task ``name`` naming its declaration and the field at fault when the task is declared
    (a `SourceError` knows its field); the error as it is for a built-in task."""
    where = declared_in(name)
    if where is None:
        return err
    field = getattr(err, "field", None)
    return UserError(f"{where}: task '{name}': {f'{field}: ' if field else ''}{err}")


def declared_in(name: str) -> str | None:
    """Where a declared task was first declared (a file, a config key); None for a built-in one."""
    known = _DECLARED.get(name)
    return None if known is None else known[1]
