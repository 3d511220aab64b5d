"""The package's shape: modules import only their own layer or lower ones, no import cycles, small files."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hyperpelt"
# Lower layers first; a module may import its own layer and those before it.
LAYERS = [
    ("errors", "options", "quiet", "tables", "faults", "atomic", "textfiles", "arguments", "provenance"),
    ("tasks",),
    ("data",),
    ("inject", "backbones", "methods", "heads", "vision"),
    ("config", "moved_keys"),
    ("model", "checkpoint", "accounting", "transfer", "encoder_texts", "run_folders"),
    ("training", "evaluation", "inference"),
    ("experiments", "serving"),
    ("cli", "__main__"),
]
LAYER = {name: index for index, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every hyperpelt module a file imports, at the top or inside a function."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
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


def test_serving_does_not_import_training():
    """Serving answers through the inference API; nothing it loads is the training loop's."""
    reached, todo = set(), [m for m in MODULES if m.startswith("hyperpelt.serving")]
    while todo:
        module = todo.pop()
        if module not in reached:
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
