"""The README's Python example runs as written, on a run this test trains."""

import contextlib
import io
import re
from pathlib import Path

from hyperpelt import load_config, train
from hyperpelt.run_folders import new_run_dir

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- readme-snippet: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README has no snippet '{name}'"
    return match.group(1)


def test_predict_snippet_runs_on_a_trained_run(tmp_path):
    code = snippet("predict")
    assert len(code.strip().splitlines()) <= 5
    config = load_config(None, [
        "model.name=t5-tiny", "model.pretrained=false", "data.tasks=[rte, stsb]",
        "data.max_train_examples=16", "data.max_eval_examples=4", "train.steps=2", "train.eval_every=2",
        "train.batch_size=4",
        f"train.output_dir={tmp_path}", "train.run_name=readme",
    ])
    run_dir = new_run_dir(config, "readme")
    train(config, run_dir, quiet=True)
    run_in_readme = re.search(r'load_run\("([^"]+)"\)', code).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code.replace(run_in_readme, str(run_dir)), {})
    rte, stsb = (eval(line) for line in out.getvalue().splitlines())
    assert len(rte) == 1 and rte[0] in ("entailment", "not_entailment", None)
    assert len(stsb) == 1 and (stsb[0] is None or isinstance(stsb[0], float))
