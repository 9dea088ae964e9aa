"""`jaxformers run TASK --model DIR ...`: JSON lines equal to `jf.task(TASK, model=DIR)(inputs, **options)`, options
from flags and `--option KEY=VALUE`, `--file` with a progress bar, one-line errors with exit status 1, and the
installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxformers as jf
from jaxformers.cli import _json_value, main

CLASSES = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
TAGS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TEXTS = ["John Smith lives in Paris and works at Microsoft in Washington", "I love it", "antidisestablishmentarianism"]


@pytest.fixture(scope="module")
def classifier(task_checkpoint):
    d, _ = task_checkpoint("bert", "BertForSequenceClassification", id2label=CLASSES,
                           label2id={v: k for k, v in CLASSES.items()})  # fmt: skip
    return d


@pytest.fixture(scope="module")
def tagger(task_checkpoint):
    d, _ = task_checkpoint("bert", "BertForTokenClassification", num_labels=len(TAGS), id2label=TAGS,
                           label2id={v: k for k, v in TAGS.items()})  # fmt: skip
    return d


def as_json(results) -> list:
    """Results as the CLI writes them (numpy scalars as plain numbers), one entry per input."""
    return [json.loads(json.dumps(r, ensure_ascii=False, default=_json_value)) for r in results]


def assert_close(expected, got, tol=1e-6):
    assert type(expected) is type(got), (expected, got)
    if isinstance(expected, list):
        assert len(expected) == len(got), (expected, got)
        for e, g in zip(expected, got):
            assert_close(e, g, tol)
    elif isinstance(expected, dict):
        assert list(expected) == list(got), (expected, got)
        for k in expected:
            assert_close(expected[k], got[k], tol)
    elif isinstance(expected, float):
        assert abs(expected - got) <= tol, (expected, got)
    else:
        assert expected == got, (expected, got)


def run_cli(capsys, *argv) -> tuple[list, str]:
    main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return [json.loads(line) for line in out.splitlines()], err


def test_text_classification(capsys, classifier):
    task = jf.task("text-classification", model=classifier)
    got, _ = run_cli(capsys, "text-classification", "--model", classifier, *TEXTS)
    assert_close(as_json(task(TEXTS)), got)
    assert len(got) == 3 and {d["label"] for d in got} <= set(CLASSES.values())
    got, _ = run_cli(capsys, "text-classification", "--model", classifier, "I love it")  # one input: a list's entry
    assert_close(as_json(task(["I love it"])), got, tol=1e-5)
    assert isinstance(got[0], dict)
    got, _ = run_cli(capsys, "sentiment-analysis", "--model", classifier, "--top-k", 2, "--option",
                     "function_to_apply=sigmoid", "--batch-size", 2, *TEXTS)  # fmt: skip
    assert_close(as_json(task(TEXTS, top_k=2, function_to_apply="sigmoid")), got)
    assert all(len(r) == 2 for r in got)


def test_ner_options(capsys, tagger):
    task = jf.task("ner", model=tagger)
    got, _ = run_cli(capsys, "ner", "--model", tagger, *TEXTS)
    assert_close(as_json(task(TEXTS)), got)
    assert got[0] and set(got[0][0]) == {"entity", "score", "index", "word", "start", "end"}
    got, _ = run_cli(capsys, "token-classification", "--model", tagger, "--aggregation-strategy", "first",
                     "--option", 'ignore_labels=["PER"]', *TEXTS)  # fmt: skip
    assert_close(as_json(task(TEXTS, aggregation_strategy="first", ignore_labels=["PER"])), got)
    groups = {e["entity_group"] for r in got for e in r}
    assert "LOC" in groups and "PER" not in groups  # ignore_labels arrived as a list, and it matters:
    assert "PER" in {e["entity_group"] for r in task(TEXTS, aggregation_strategy="first") for e in r}


def test_file_input_with_progress_bar(capsys, tagger, classifier, tmp_path):
    lines = [*TEXTS, "", "Crème brûlée in Paris"]
    f = tmp_path / "in.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    got, err = run_cli(capsys, "ner", "--model", tagger, "--file", f, "--aggregation-strategy", "simple",
                       "--batch-size", 2)  # fmt: skip
    assert_close(as_json(jf.task("ner", model=tagger)(lines, aggregation_strategy="simple")), got)
    assert len(got) == len(lines) and got[3] == []  # the empty line is an input too: output lines stay aligned
    assert "5/5" in err  # tqdm's bar, on stderr
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"text": "first one", "text_pair": "the second"}\nplain text\n', encoding="utf-8")
    got, _ = run_cli(capsys, "text-classification", "--model", classifier, "--file", pairs)
    task = jf.task("text-classification", model=classifier)
    assert_close(as_json(task([{"text": "first one", "text_pair": "the second"}, "plain text"])), got)


def test_question_answering_and_zero_shot_inputs(capsys, monkeypatch):
    """The QA and zero-shot flags become the inputs and options those pipelines take (a stand-in task records
    them: this checks the command line's part only)."""
    import jaxformers.tasks as tasks

    calls = []

    def fake_task(name, model=None, tokenizer=None, **load):
        def call(inputs, **options):
            calls.append((name, model, load, inputs, options))
            results = [{"n": i, "input": x} for i, x in enumerate(inputs)]
            return results[0] if len(results) == 1 else results  # a batch of one unwrapped, as QA and fill-mask do

        return call

    monkeypatch.setattr(tasks, "task", fake_task)
    got, _ = run_cli(capsys, "question-answering", "--model", "m", "--question", "Who?", "--question", "Where?",
                     "--context", "John, in Paris.", "--top-k", 2)  # fmt: skip
    pairs = [{"question": "Who?", "context": "John, in Paris."}, {"question": "Where?", "context": "John, in Paris."}]
    assert got == [{"n": 0, "input": pairs[0]}, {"n": 1, "input": pairs[1]}]
    assert calls[-1] == ("question-answering", "m", {}, pairs, {"top_k": 2})
    got, _ = run_cli(capsys, "question-answering", "--model", "m", "--question", "Who?", "--context", "Anna.")
    assert got == [{"n": 0, "input": {"question": "Who?", "context": "Anna."}}]  # one input: one line, unwrapped
    got, _ = run_cli(capsys, "zero-shot-classification", "--model", "m", "--candidate-labels", "sports, politics,",
                     "--option", "multi_label=true", "--option", "dtype=bfloat16", "--option", "top-k=null",
                     "--option", "hypothesis_template=This is {}.", "The match ended 2-1", "Vote!")  # fmt: skip
    assert [r["input"] for r in got] == ["The match ended 2-1", "Vote!"]
    name, _, load, inputs, options = calls[-1]
    assert inputs == ["The match ended 2-1", "Vote!"] and load == {"dtype": "bfloat16"}
    assert options == {"candidate_labels": ["sports", "politics"], "multi_label": True, "top_k": None,
                       "hypothesis_template": "This is {}."}  # fmt: skip


@pytest.mark.parametrize("argv, message", [
    (["no-such-task", "--model", "{classifier}", "x"], "ValueError: unknown task 'no-such-task'"),
    (["ner", "--model", "{missing}", "x"], "FileNotFoundError: '{missing}' is neither an existing local"),
    (["ner", "--model", "{tagger}", "--option", "bogus=1", "x"], "unknown option(s) ['bogus']"),
    (["ner", "--model", "{tagger}", "--option", "stride", "x"], "--option takes KEY=VALUE"),
    (["ner", "--model", "{tagger}", "--aggregation-strategy", "grouped", "x"], "aggregation_strategy must be one"),
    (["ner", "--model", "{tagger}"], "give the inputs one way"),
    (["ner", "--model", "{tagger}", "--file", "{missing}"], "No such file"),
    (["question-answering", "--model", "{tagger}", "--question", "q"], "needs both --question Q and --context C"),
])  # fmt: skip
def test_errors_are_one_line_and_exit_1(capsys, classifier, tagger, tmp_path, argv, message):
    names = {"classifier": classifier, "tagger": tagger, "missing": tmp_path / "missing.txt"}
    argv, message = [a.format(**names) for a in argv], message.format(**names)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *argv])
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("jaxformers run: error: ") and message in err, err


def test_installed_entry_point(tagger):
    """`jaxformers` as installed in the venv (pyproject's [project.scripts]) runs a task end to end."""
    exe = Path(sys.executable).parent / "jaxformers"
    assert exe.is_file(), f"{exe} is missing: install the project (pip install -e .) to get the entry point"
    proc = subprocess.run([str(exe), "run", "ner", "--model", str(tagger), "--aggregation-strategy", "simple",
                           *TEXTS[:2]], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = as_json(jf.task("ner", model=tagger)(TEXTS[:2], aggregation_strategy="simple"))
    assert_close(expected, got, tol=1e-5)
    assert got[0] and all(isinstance(e["score"], float) and not np.isnan(e["score"]) for e in got[0])
