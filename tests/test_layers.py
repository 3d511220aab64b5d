"""The package's shape: modules import only their own layer or lower ones, no import cycles, small files."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hyperpelt"
# Lower layers first; a module may import its own layer and those before it.
LAYERS = [
    ("errors", "options", "quiet", "tables", "faults", "atomic", "textfiles", "yamlfiles", "arguments",
     "provenance", "devices"),
    ("tasks",),
    ("data",),
    ("inject", "backbones", "methods", "heads", "vision"),
    ("config", "moved_keys"),
    ("model", "checkpoint", "accounting", "transfer", "run_folders"),
    ("training", "evaluation", "inference"),
    ("experiments", "serving"),
    ("cli", "params_command", "__main__"),
]
LAYER = {name: index for index, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, source: str | None = None) -> set[str]:
    """Every hyperpelt module a file imports (its text, or ``source`` read as if there), at the top or
    inside a function."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("hyperpelt"):
                found.add(target)
                submodules = {f"{target}.{alias.name}" for alias in node.names}
                found |= {m for m in submodules if (SRC.parent / f"{m.replace('.', '/')}.py").is_file()}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("hyperpelt")}
    return found


def ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
# A module's own packages are imported before it anyway: importing from them is no edge.
GRAPH = {name: {m for m in imported(path) if m in MODULES and m != name and m not in ancestors(name)}
         for name, path in MODULES.items()}


def layer(module: str) -> int:
    return LAYER[module.split(".")[1]]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "hyperpelt"))
def test_no_module_imports_a_higher_layer(module):
    higher = sorted(m for m in GRAPH[module] if m != "hyperpelt" and layer(m) > layer(module))
    assert not higher, f"{module} (layer {layer(module)}) imports {higher}"


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(module, path):
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                raise AssertionError(" -> ".join(path + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [])


# The one module of serving that reaches the training loop: the background worker that trains the tasks
# added while serving (POST /v1/tasks, hyperpelt tasks add), on models of its own.
SERVING_TRAINS = "hyperpelt.serving.task_worker"


def test_serving_does_not_import_training():
    """Serving answers through the inference API; nothing it loads is the training loop's, but for the
    worker that trains added tasks."""
    reached, todo = set(), [m for m in MODULES if m.startswith("hyperpelt.serving") and m != SERVING_TRAINS]
    while todo:
        module = todo.pop()
        if module not in reached and module != SERVING_TRAINS:
            reached.add(module)
            todo.extend(GRAPH[module])
    assert not sorted(m for m in reached if m.startswith("hyperpelt.training"))


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert not {name: n for name, n in sizes.items() if n > 300}
    assert sizes["hyperpelt.cli"] < 200


# Names of host (Hugging Face) model internals. Only backbones/ may name them: inject/ gets what it needs
# of a host (position bias, layer-norm epsilon, ...) from the backbone, as objects handed down at inject time.
HOST_ATTRIBUTES = {
    "relative_attention_bias", "has_relative_attention_bias", "compute_bias", "_relative_position_bucket",
    "relative_attention_num_buckets", "relative_attention_max_distance", "variance_epsilon", "is_decoder",
    "key_value_proj_dim", "EncDecAttention", "SelfAttention", "embeddings", "padding_idx",
}


def test_inject_names_no_host_attribute():
    """No attribute, name or string in inject/ is a host internal, and no module there imports a model
    family's modeling code (transformers.models.*); transformers' attention and mask interfaces are fine."""
    found = {}
    for path in sorted((SRC / "inject").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = (node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name)
                    else node.value if isinstance(node, ast.Constant) and isinstance(node.value, str)
                    else None)
            modules = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                       else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            hits = {name} & HOST_ATTRIBUTES | {m for m in modules if m.startswith("transformers.models")}
            found.setdefault(path.name, set()).update(hits)
    assert not {file: names for file, names in found.items() if names}


# The layers below `model`: they get narrow collaborators (a collator, an encoder step, a backbone), never
# the TunedModel. The word `model` means TunedModel, so none of them has a parameter of that name either.
BELOW_MODEL = ("data", "heads", "tasks", "inject", "methods", "backbones")


def model_uses(path: Path, source: str | None = None) -> list[str]:
    """Where a file (or ``source`` read as if it lay there) takes or imports the TunedModel: a parameter
    named `model` or annotated with TunedModel, of a function or a lambda; an import of hyperpelt.model
    or of the name TunedModel."""
    source = path.read_text() if source is None else source
    found = [f"imports {m}" for m in sorted(imported(path, source))
             if m == "hyperpelt.model" or m.startswith("hyperpelt.model.")]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and any(a.name in ("model", "TunedModel") for a in node.names):
            if node.level or (node.module or "").startswith("hyperpelt"):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            for arg in filter(None, every):
                typed = arg.annotation is not None and "TunedModel" in ast.unparse(arg.annotation)
                if arg.arg == "model" or typed:
                    found.append(f"line {node.lineno}: {getattr(node, 'name', 'lambda')}({arg.arg})")
    return found


def test_no_module_below_the_model_takes_or_imports_it():
    found = {str(path.relative_to(SRC)): uses for folder in BELOW_MODEL
             for path in sorted((SRC / folder).rglob("*.py")) if (uses := model_uses(path))}
    assert not found, found


def test_the_model_check_catches_each_way_of_taking_the_model():
    """Each source, read as if it were data/scratch.py, is caught (so the check above can fail)."""
    sources = [
        "def collate(model, rows): ...", "def collate(host, *, model=None): ...", "f = lambda model: model",
        "def encode(step: 'TunedModel'): ...", "def encode(step: TunedModel | None = None): ...",
        "from ..model import TunedModel", "from hyperpelt.model.tuned import TunedModel",
        "from hyperpelt import model", "def f():\n    import hyperpelt.model.encoding",
    ]
    assert not [source for source in sources if not model_uses(SRC / "data" / "scratch.py", source)]
