import pytest

from llava.eval.m4c_evaluator import (ARTICLES, CONTRACTIONS, NUMBER_MAP, PUNCTUATIONS, EvalAIAnswerProcessor,
                                      TextVQAAccuracyEvaluator)


@pytest.mark.parametrize("raw, expected", [
    # scorers.md §2.2 worked examples, column B
    ("Yes.", "yes"),
    ("The man's hat", "man 's hat"),
    ("Two dogs", "2 dogs"),
    ("1,000-2,000", "1000 2000"),
    ("A red, white bus", "red white bus"),
    ("None", "0"),
    ("T-shirt", "t shirt"),
    ("e-mail?", "e mail"),
    ("dont", "don't"),
    # further rules
    ("3.5 ft.", "3.5 ft"),          # a period before a digit survives
    ("10:30", "10:30"),             # colon is not punctuation here
    ("rock - paper", "rock paper"),  # punctuation next to a space is deleted, not spaced
    ("(left)", "left"),
    ("a\tb\nc", "b c"),             # tabs/newlines become spaces; 'a' is an article
    ("Whats up!", "what's up"),
    ("Im here", "im here"),         # capitalised table keys never match after lower-casing
])
def test_processor_examples(raw, expected):
    assert EvalAIAnswerProcessor()(raw) == expected


def test_period_count_quirk():
    # Upstream passes re.UNICODE (32) as count: only the first 32 periods are removed.
    assert EvalAIAnswerProcessor()("." * 40) == "." * 8


def test_table_sizes():
    assert (len(CONTRACTIONS), len(NUMBER_MAP), len(ARTICLES), len(PUNCTUATIONS)) == (120, 12, 3, 21)
    assert "'" not in PUNCTUATIONS and ":" not in PUNCTUATIONS


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_accuracy_table(k, expected):
    gts = ["Red"] * k + ["blue"] * (10 - k)
    assert TextVQAAccuracyEvaluator().score("red.", gts) == pytest.approx(expected)


def test_eval_pred_list_mean_and_checks():
    ev = TextVQAAccuracyEvaluator()
    preds = [{"pred_answer": "Two", "gt_answers": ["2"] * 10},
             {"pred_answer": "cat", "gt_answers": ["cat"] + ["dog"] * 9}]
    assert ev.eval_pred_list(preds) == pytest.approx((1.0 + 0.3) / 2)
    with pytest.raises(ValueError, match="10 ground-truth"):
        ev.eval_pred_list([{"pred_answer": "x", "gt_answers": ["x"] * 9}])
    with pytest.raises(ValueError, match="empty"):
        ev.eval_pred_list([])
