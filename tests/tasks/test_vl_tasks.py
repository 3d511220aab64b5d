"""V&L tasks (tasks/vl.py): readers of the official layouts (tests/fixtures/vl), formats, kinds, metrics."""

import json
import shutil
import warnings

import pytest

from conftest import ROOT
from hyperpelt.errors import UserError
from hyperpelt.tasks import Task, get_task, load_task_splits
from hyperpelt.tasks.sources import read_local
from hyperpelt.tasks.vl import EASY_VQA_ANSWERS, answer_index, answer_vocabulary
from hyperpelt.tasks.vl_readers import read_easy_vqa, vgqa_role
from hyperpelt.tasks.vqa_metrics import answer_accuracy, normalize_answer, vqa_accuracy, vqa_score

VL = ROOT / "tests" / "fixtures" / "vl"
NET = ["net", "net", "net", "netting", "net", "net", "mesh", "net", "net", "net"]


def read(name, role="train", root=VL):
    return read_local(name, get_task(name).local, role, root)


# ------------------------------------------------------------------------------------------ readers


def test_vqa_karpathy_reader_and_format():
    train = read("vqa")
    assert train[0] == {"question": "What is this photo taken looking through?",
                        "image_id": "COCO_train2014_000000458752", "question_id": "458752000", "label": "net",
                        "answers": NET, "answer_scores": {"net": 1.0, "netting": 0.3}, "idx": 0}
    assert train[1]["answers"] == ["2", "2", "two", "2", "2", "2", "2 ", "2", "3", "2"]
    assert train[2]["label"] == "yes"  # tie of label scores: the first
    assert read("vqa", "test")[0]["label"] == "sandwich"  # no label scores: the most common human answer
    vqa = get_task("vqa")
    assert vqa.input_text(train[0]) == "vqa question: What is this photo taken looking through?"
    assert vqa.target_text(train[0]) == "net"
    assert vqa.reference(train[0]) == NET


def test_gqa_reader_and_format():
    train = read("gqa")
    assert train[1] == {"question": "What is on the white wall?", "image_id": "2375429",
                        "question_id": "07333408", "label": "pipe", "answers": ["pipe"],
                        "answer_scores": {"pipe": 1.0}, "idx": 1}
    assert get_task("gqa").input_text(train[1]) == "gqa question: What is on the white wall?"
    assert read("gqa", "test")[0]["image_id"] == "n161313"


def test_coco_karpathy_reader_and_format():
    train = read("coco")  # train + restval, one example per caption
    assert [(ex["image_id"], ex["label"]) for ex in train] == [
        ("COCO_train2014_000000318556", "A bathroom with a white sink."),
        ("COCO_train2014_000000318556", "A small white bathroom with a mirror."),
        ("COCO_val2014_000000522418", "A woman cutting a large cake.")]
    test = read("coco", "test")
    assert test == ({"image_id": "COCO_val2014_000000391895", "cocoid": "391895",
                     "references": ["A man riding a bike down a dirt road.",
                                    "A cyclist rides on a dirt path."],
                     "label": "A man riding a bike down a dirt road.", "idx": 0},)
    assert [ex["cocoid"] for ex in read("coco", "dev")] == ["184613"]
    coco = get_task("coco")
    assert coco.input_text(test[0]) == "caption:" and coco.target_text(test[0]) == test[0]["label"]
    assert coco.reference(test[0]) == test[0]["references"]


def test_vgqa_reader_splits_images_by_hash():
    assert [vgqa_role(i) for i in ("1", "2", "37", "74")] == ["train", "train", "dev", "test"]
    train = read("vgqa")
    assert train[1] == {"question": "How many people are walking?", "image_id": "1", "question_id": "986769",
                        "label": "Two.", "answers": ["Two."], "idx": 1}
    assert [ex["image_id"] for ex in train] == ["1", "1", "2"]
    assert [ex["label"] for ex in read("vgqa", "dev")] == ["A phone."]
    assert [ex["label"] for ex in read("vgqa", "test")] == ["Daytime."]
    assert get_task("vgqa").input_text(train[0]) == "vgqa question: What color is the clock?"


def test_okvqa_reader_joins_questions_and_annotations():
    train = read("okvqa")
    assert train[0]["question"] == "What is the hairstyle of the blond called?"
    assert train[0]["image_id"] == "COCO_train2014_000000051606" and train[0]["question_id"] == "516065"
    assert train[0]["label"] == "pony tail" and len(train[0]["answers"]) == 10
    assert read("okvqa", "dev")[1]["label"] == "club"
    assert get_task("okvqa").input_text(train[1]) == "okvqa question: Which dog breed is this?"


def test_snli_ve_reader_and_format():
    train = read("snli_ve")
    assert train[0] == {"hypothesis": "Two women are holding packages.", "image_id": "2248275918",
                        "label": 0, "idx": 0}
    assert [ex["label"] for ex in train] == [0, 1, 2]  # the blank line is skipped
    task = get_task("snli_ve")
    assert task.input_text(train[0]) == "snli-ve premise: Two women are holding packages."
    assert [task.target_text(ex) for ex in train] == ["entailment", "neutral", "contradiction"]


def test_easy_vqa_reader_and_package():
    task = get_task("easy_vqa")
    examples = read_easy_vqa(str(VL / "easy_vqa" / "train" / "questions.json"), task.local, "train")
    assert examples[0] == {"question": "what is the blue shape?", "image_id": "train/0", "label": 7,
                           "answers": ["rectangle"], "idx": 0}
    assert task.input_text(examples[0]) == "easy_vqa question: what is the blue shape?"
    assert task.target_text(examples[3]) == "no"
    easy_vqa = pytest.importorskip("easy_vqa")
    assert EASY_VQA_ANSWERS == tuple(easy_vqa.get_answers())
    splits = load_task_splits("easy_vqa")  # the package's own files; test halved into validation / test
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (38575, 4836, 4837)
    assert splits.train[0]["question"] == easy_vqa.get_train_questions()[0][0]


@pytest.mark.parametrize("name, sizes", [("vqa", (3, 1, 1)), ("gqa", (3, 1, 1)), ("coco", (3, 1, 1)),
                                         ("vgqa", (3, 1, 1)), ("okvqa", (2, 1, 1)), ("snli_ve", (3, 1, 1))])
def test_split_rules(name, sizes):
    splits = load_task_splits(name, data_dir=VL)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == sizes


# ------------------------------------------------------------------------------------------ malformed


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line_error(name, root, role="train"):
    with pytest.raises(UserError) as info:
        read(name, role, root)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("name, rel, records, expected", [
    ("vqa", "vqa/karpathy_train.json",
     [{"img_id": "x", "sent": "q", "question_id": 1, "label": {}, "answers": []},
      {"img_id": "x", "question_id": 2, "label": {}, "answers": []}],
     "karpathy_train.json: record 1: missing field 'sent'"),
    ("vqa", "vqa/karpathy_train.json", [{"img_id": "x", "sent": "q", "question_id": 1, "label": ["yes"],
                                         "answers": []}],
     "karpathy_train.json: record 0: field 'label' must be dict, got list"),
    ("gqa", "gqa/train.json", [{"img_id": "x", "sent": "q", "label": {"a": 1}}],
     "train.json: record 0: missing field 'question_id'"),
    ("coco", "coco/dataset_coco.json", {"images": [{"filename": "a.jpg", "sentences": [], "cocoid": 1}]},
     "dataset_coco.json: image 0: missing field 'split'"),
    ("coco", "coco/dataset_coco.json", {"images": [{"filename": "a.jpg", "split": "train", "cocoid": 1,
                                                    "sentences": [{"raw": "A."}, {"tokens": []}]}]},
     "dataset_coco.json: image 0, sentence 1: missing field 'raw'"),
    ("vgqa", "vg/question_answers.json", [{"id": 1, "qas": [{"question": "q", "answer": "a", "qa_id": 1},
                                                            {"question": "q", "qa_id": 2}]}],
     "question_answers.json: record 0, qa 1: missing field 'answer'"),
    ("easy_vqa", "easy_vqa/train/questions.json", [["q", "circle", 0], ["q", "purple", 1]],
     "questions.json: record 1: answer 'purple' is not one of the 13 answers"),
])
def test_malformed_json_records_name_file_record_and_field(tmp_path, name, rel, records, expected):
    path = write(tmp_path, rel, json.dumps(records))
    if name == "easy_vqa":
        with pytest.raises(UserError, match=expected) as info:
            read_easy_vqa(str(path), get_task(name).local, "train")
        assert str(path) in str(info.value)
        return
    message = one_line_error(name, tmp_path)
    assert message.startswith(str(path)) and expected in message


def test_invalid_json_names_file_and_line(tmp_path):
    path = write(tmp_path, "gqa/train.json", '[\n{"img_id": "x",\n  oops}\n]')
    assert one_line_error("gqa", tmp_path).startswith(f"{path}:3: not valid JSON")


def test_snli_ve_malformed_lines(tmp_path):
    good = '{"sentence2": "A.", "Flickr30K_ID": "1", "gold_label": "neutral"}'
    bad = '{"sentence2": "B.", "Flickr30K_ID": "1"}'
    path = write(tmp_path, "snli_ve/snli_ve_train.jsonl", f"{good}\n{bad}\n")
    assert one_line_error("snli_ve", tmp_path) == f"{path}:2: missing key 'gold_label'"
    write(tmp_path, "snli_ve/snli_ve_train.jsonl", good.replace("neutral", "-") + "\n")
    assert "snli_ve_train.jsonl:1: label '-' is not allowed" in one_line_error("snli_ve", tmp_path)


def test_okvqa_needs_its_annotations(tmp_path):
    questions = {"questions": [{"image_id": 1, "question": "q", "question_id": 11}]}
    write(tmp_path, "okvqa/OpenEnded_mscoco_train2014_questions.json", json.dumps(questions))
    message = one_line_error("okvqa", tmp_path)
    assert message.startswith(str(tmp_path / "okvqa" / "mscoco_train2014_annotations.json"))
    write(tmp_path, "okvqa/mscoco_train2014_annotations.json", json.dumps({"annotations": []}))
    assert "question 0: question_id 11 has no annotation" in one_line_error("okvqa", tmp_path)


# ------------------------------------------------------------------------------------------ task kinds


def test_kinds_of_tasks():
    assert get_task("rte").kind == "classification" and get_task("stsb").kind == "regression"
    assert get_task("snli_ve").kind == "classification" and get_task("easy_vqa").num_labels == 13
    assert get_task("coco").kind == "caption" and get_task("vqa").kind == "answer"
    vqa = get_task("vqa")
    assert vqa.is_open and not vqa.is_regression
    with pytest.raises(ValueError, match="open vocabulary"):
        _ = vqa.num_labels
    assert vqa.parse_prediction(" 2 dogs\n") == "2 dogs" and vqa.answer("2 dogs") == "2 dogs"
    assert vqa.parse_input("What is it?", "x") == {"question": "What is it?", "label": ""}
    with pytest.raises(ValueError, match="label_names go with kind 'classification'"):
        Task("x", (), ("a",), (), kind="answer")
    with pytest.raises(ValueError, match="kind must be one of"):
        Task("x", (), None, (), kind="text")


def test_answer_vocabulary():
    vocabulary = answer_vocabulary(read("vqa") + read("vqa", "dev"))
    assert vocabulary == ("yes", "2", "net")  # "yes" twice, the others once (ties alphabetical)
    assert answer_vocabulary(read("vqa") + read("vqa", "dev"), min_count=2) == ("yes",)
    assert answer_index(vocabulary, "Two") == 1 and answer_index(vocabulary, "mesh") == -1


# ------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("raw, normalized", [
    ("Two", "2"), ("a dog", "dog"), ("yes.", "yes"), ("The Dog!", "dog"), ("dont", "don't"),
    ("black/white", "black white"), ("3.5", "3.5"), ("1,000", "1000"), ("Ten  apples\n", "10 apples"),
    ("an apple", "apple"), ("none", "0"), ("isnt it?", "isn't it")])
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_by_number_of_matching_humans(matches, expected):
    # m matches of 10: m subsets keep m - 1 matches, 10 - m keep m; each min(1, k / 3), averaged:
    # 1 -> 9 * (1/3) / 10 = 0.3; 2 -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6; 3 -> (3 * 2/3 + 7) / 10 = 0.9
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy(answers, "cat") == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    counts = read("vqa")[1]["answers"]  # eight "2" (one "2 "), one "two", one "3"
    assert vqa_accuracy(counts, "Two") == 1.0 and vqa_accuracy(counts, "3") == pytest.approx(0.3)
    assert vqa_accuracy(read("vqa", "dev")[0]["answers"], "Yes") == 1.0  # nine "yes", one "yes."
    plate = read("vqa", "test")[0]["answers"]  # 2 "a sandwich" + 3 "sandwich", 2 "bread", 1 "food"
    assert vqa_accuracy(plate, "the sandwich") == 1.0 and vqa_accuracy(plate, "bread") == pytest.approx(0.6)
    assert vqa_accuracy(plate, "food") == pytest.approx(0.3) and vqa_accuracy(plate, "pizza") == 0.0
    assert vqa_accuracy([{"answer": a} for a in NET], "netting") == pytest.approx(0.3)
    assert vqa_accuracy(NET, None) == 0.0 and vqa_accuracy(["Green."], "green") == 1.0


def test_vqa_score_and_task_score():
    assert vqa_score([NET, NET], ["netting", "net"]) == {"vqa_score": pytest.approx(65.0)}
    metrics, score = get_task("okvqa").score([ex["answers"] for ex in read("okvqa")], ["ponytail", "lab"])
    assert metrics == {"vqa_score": pytest.approx(60.0)} and score == pytest.approx(60.0)
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        vqa_score([NET, NET], ["net"])


def test_answer_accuracy():
    assert answer_accuracy(["yes", "Two.", ["pipe"], "left"], ["Yes", "2", "a pipe", None]) == {
        "accuracy": 75.0}


CAPTIONS = [  # 3 images x 5 reference captions
    ["A man riding a bike down a dirt road.", "A cyclist rides on a dirt path.",
     "A person on a bicycle on a trail.", "A man bikes along a country road.",
     "Someone cycling on a dirt road."],
    ["A bathroom with a white sink.", "A small white bathroom with a mirror.",
     "A clean bathroom with a sink.", "A white sink under a mirror.", "A bathroom sink and a toilet."],
    ["A woman cutting a large cake.", "A lady slices a birthday cake.", "A woman cuts a cake on a table.",
     "A person cutting a white cake.", "A woman with a knife and a cake."],
]


def test_caption_metrics():
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("the caption metrics run Java")
    from hyperpelt.tasks.caption_metrics import CaptionMetricWarning, caption_metrics

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = caption_metrics(CAPTIONS, [refs[0] for refs in CAPTIONS])
        other = caption_metrics(CAPTIONS, ["Two dogs play with a frisbee."] * 3, spice=False)
    notes = [str(w.message) for w in caught if issubclass(w.category, CaptionMetricWarning)]
    for name in ("bleu_4", "meteor", "cider"):
        assert 0.0 <= other[name] < same[name] <= (1000.0 if name == "cider" else 100.0), name
    if "spice" in same:
        assert 0.0 <= same["spice"] <= 100.0
    else:
        assert len(notes) == 1 and notes[0].startswith("SPICE could not run: ") and "\n" not in notes[0]


def test_open_vocabulary_tasks_on_an_encoder_are_refused_in_one_line():
    from conftest import build_model, minilm_config
    from hyperpelt.errors import UserError

    with pytest.raises(UserError, match="task 'vqa' answers in free text"):
        build_model(minilm_config(), tasks=["vqa"])


def test_a_text_to_text_model_trains_on_vqa_questions_and_is_scored_against_every_human_answer(tmp_path):
    """Without images (the question-only floor): the run trains, and the VQA score reads the answers."""
    from hyperpelt import load_config, train
    from hyperpelt.run_folders import new_run_dir

    config = load_config(None, [
        "model.name=t5-tiny", "model.pretrained=false", "data.tasks=[vqa]", f"data.data_dir={VL}",
        "train.steps=2", "train.eval_every=2", "train.batch_size=2", "method.prefix_length=2",
        f"train.output_dir={tmp_path}", "train.run_name=vqa",
    ])
    results = train(config, new_run_dir(config, "vqa"), quiet=True)
    assert set(results["tasks"]["vqa"]["metrics"]) == {"vqa_score"}
    assert 0.0 <= results["tasks"]["vqa"]["score"] <= 100.0
