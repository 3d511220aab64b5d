"""Tasks: text-to-text formats, metrics, local/hub data sources and the split protocol.

Importing this package registers every task.
"""

from hyperpelt.tasks import glue, superglue, transfer_tasks, vl  # noqa: F401  (registers the tasks)
from hyperpelt.tasks.registry import Task, TaskRegistry, get_task, register, task_names
from hyperpelt.tasks.splits import Splits, load_task_splits

__all__ = ["Task", "TaskRegistry", "Splits", "get_task", "load_task_splits", "register", "task_names"]
