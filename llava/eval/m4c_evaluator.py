"""EvalAI answer normalisation and VQA soft accuracy (scorers.md §2, variant B).

Behaviour follows the EvalAI processor used by mmf's ``m4c_evaluators`` (and LLaVA's
converters), including its quirks, so that local numbers and upload files match upstream.
"""
from __future__ import annotations

import re
from collections import Counter

# Apostrophe-less form -> apostrophe form (120 entries, the EvalAI table verbatim). The
# capitalised keys can never match because text is lower-cased first; they are kept so the
# table stays identical to upstream.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBER_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATIONS = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!"]
# Upstream's period pattern starts with a mistyped look-behind ``(?!<=\d)`` that is always true
# before a '.', so it reduces to "a period not followed by a digit".
PERIOD_STRIP = re.compile(r"\.(?!\d)")
# Upstream passes re.UNICODE (== 32) positionally as ``count``: at most 32 periods are removed.
PERIOD_STRIP_COUNT = 32


class EvalAIAnswerProcessor:
    """Normalise a free-form answer the way EvalAI / mmf do (scorers.md §2.2, column B)."""

    def __call__(self, answer: str) -> str:
        text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
        text = text.replace("\n", " ").replace("\t", " ").strip()
        return self._digits_articles(self._punctuation(text))

    @staticmethod
    def _punctuation(text: str) -> str:
        # The delete-vs-space decision looks at the input string, not the partly edited one.
        # Upstream's digit-comma-digit clause is omitted: commas are already gone, so it never fires.
        out = text
        for p in PUNCTUATIONS:
            out = out.replace(p, "" if p + " " in text or " " + p in text else " ")
        return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)

    @staticmethod
    def _digits_articles(text: str) -> str:
        words = [NUMBER_MAP.get(w, w) for w in text.lower().split()]
        return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


class TextVQAAccuracyEvaluator:
    """Soft VQA accuracy (§2.1) over ``[{"pred_answer": str, "gt_answers": [10 str]}]``."""

    def __init__(self) -> None:
        self.answer_processor = EvalAIAnswerProcessor()

    def score(self, pred_answer: str, gt_answers: list[str]) -> float:
        """Mean over the 10 leave-one-out subsets of min(1, matches among the other 9 / 3)."""
        if len(gt_answers) != 10:
            raise ValueError(f"expected 10 ground-truth answers, got {len(gt_answers)}")
        pred = self.answer_processor(pred_answer)
        gts = [self.answer_processor(a) for a in gt_answers]
        k = Counter(gts)[pred]
        # Leaving out a GT equal to the prediction removes one match; any other leaves all k.
        return sum(min(1.0, (k - (g == pred)) / 3) for g in gts) / len(gts)

    def eval_pred_list(self, pred_list: list[dict]) -> float:
        """Mean soft accuracy in [0, 1]."""
        if not pred_list:
            raise ValueError("empty prediction list")
        return sum(self.score(e["pred_answer"], e["gt_answers"]) for e in pred_list) / len(pred_list)
