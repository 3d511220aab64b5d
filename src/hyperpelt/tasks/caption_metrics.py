"""Caption metrics through the COCO caption evaluation (`pycocoevalcap`, the optional extra ``vl``).

`caption_metrics(targets, predictions)`: each target is the list of reference captions of one image, each
prediction one generated caption. Returns BLEU-4, METEOR, CIDEr and SPICE in percent, the texts tokenised
by the PTB tokenizer first, as the COCO evaluation does. METEOR, SPICE and the tokenizer run Java.

A metric that cannot run is left out of the result and named in one warning line (never a traceback):
SPICE needs the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap downloads (about 400 MB) at first use;
here they are never fetched implicitly: without them SPICE is reported as not runnable (see
docs/vl_data.md for fetching them once).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

CORENLP_JAR = "stanford-corenlp-3.6.0.jar"


class CaptionMetricWarning(UserWarning):
    """A caption metric could not run; the message says which and why, in one line."""


def _note(message: str) -> None:
    warnings.warn(message, CaptionMetricWarning, stacklevel=3)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def spice_missing() -> str | None:
    """None when SPICE can run here, else why not (one phrase)."""
    if shutil.which("java") is None:
        return "java is not on PATH"
    try:
        import pycocoevalcap.spice as spice
    except ImportError:
        return "pycocoevalcap is not installed (pip install 'hyperpelt[vl]')"
    lib = Path(spice.__file__).parent / "lib"
    if not (lib / CORENLP_JAR).is_file():
        return (f"the Stanford CoreNLP jars are not in {lib} (fetch them once, online, with "
                f"python -m pycocoevalcap.spice.get_stanford_models)")
    return None


def caption_metrics(targets: Sequence, predictions: Sequence, spice: bool = True) -> dict[str, float]:
    """BLEU-4, METEOR, CIDEr and (when runnable, and ``spice``) SPICE, in percent."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not len(targets):
        raise ValueError("no examples to score")
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        _note("caption metrics could not run: pycocoevalcap is not installed (pip install 'hyperpelt[vl]')")
        return {}
    refs = {i: [{"caption": str(c)} for c in ([t] if isinstance(t, str) else t)]
            for i, t in enumerate(targets)}
    cands = {i: [{"caption": "" if p is None else str(p)}] for i, p in enumerate(predictions)}
    try:
        tokenizer = PTBTokenizer()
        refs, cands = tokenizer.tokenize(refs), tokenizer.tokenize(cands)
    except Exception as err:  # Java missing or failing: no metric can be computed on untokenised text
        _note(f"caption metrics could not run: the PTB tokenizer failed ({_one_line(err)})")
        return {}
    scorers = [("bleu_4", lambda: Bleu(4), lambda s: s[3]), ("meteor", Meteor, float),
               ("cider", Cider, float)]
    if spice:
        missing = spice_missing()
        if missing is None:
            from pycocoevalcap.spice.spice import Spice

            scorers.append(("spice", Spice, float))
        else:
            _note(f"SPICE could not run: {missing}")
    out: dict[str, float] = {}
    for name, make, pick in scorers:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its n-gram counts
                score, _ = make().compute_score(refs, cands)
            out[name] = 100.0 * float(pick(score))
        except Exception as err:  # a Java metric that fails is named, the others still return
            _note(f"{name.upper()} could not run ({_one_line(err)})")
    return out
