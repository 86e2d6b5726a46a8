"""Simulated labelers: gold reward functions plus a Bradley-Terry annotator.

They stand in for people so notebooks, tests and benchmarks can label thousands of pairs unattended,
and they are the ground truth ("gold") that later stages are judged by — not the learned proxy.

Gold rewards, for a prompt x and a completion y (words = whitespace-split tokens of y):
  positive        r = VADER compound sentiment of y, in [-1, 1]
  concise         r = -max(0, lo - |words|, |words| - hi) / 10   (0 inside the window [lo, hi] = [8, 30] words)
  no-repeat       r = -(repeated word 3-grams) / (all word 3-grams)  in [-1, 0]
  upbeat-concise  r = positive + concise + no-repeat            (the round-1 default; it ignores the prompt)
  task            t = task_following(x, y) in [0, 1]: does y address x? (see `task_following`; on task: t >= 0.5)
  helpful-upbeat-concise (the default)
                  r = GATE * [t >= 0.5] + 0.5 * t + clip(style, -3, 1)
                  style = positive(content) + concise + 2 * no-repeat + complete + filler + asked-for
    content   y without its stock pleasantries ("I'm so glad you asked!", "Have a wonderful day!"): cheerfulness
              counts only where it is about the thing asked for.
    complete  -0.5 when y stops mid-sentence (no closing . ! ? or quote): a person reads a cut-off reply as broken.
    no-repeat counts twice: a reply that loops reads as broken as one cut off.
    filler    -(words in stock pleasantries) / |words|, in [-1, 0]: padding that answers nothing.
    asked-for -0.3 when a review holds no opinion, a tip no instruction, a message addresses no one (`kind_check`).
    GATE = 5  larger than the widest style range (4) plus the task bonus (0.5): an off-task reply can never outscore
              an on-task one, however cheerful or short; the smallest margin (1.0) is 10 noise units at T = 0.1.
    0.5 * t   a small pull toward the more relevant of two on-task replies; small, because relevance is the part
              of the task term a policy could push by stuffing prompt words (see `task_following`).
  Between two on-task replies the differences are those of upbeat-concise (VADER, 0.1 per word outside the window),
  so the annotator's T = 0.1 keeps the meaning it was calibrated for: it errs on close calls, not on the gate.

Annotator (Bradley & Terry 1952): P(A > B) = sigmoid((r_A - r_B) / T). T is the annotator's noise:
T -> 0 always picks the higher gold reward; large T is a coin flip.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

GoldReward = Callable[[str, str], float]  # (prompt text, completion) -> gold reward

DEFAULT_ORACLE = "helpful-upbeat-concise"
CONCISE_WINDOW = (8, 30)  # words: short replies a person can rate at a glance
ON_TASK = 0.5  # task_following at or above this counts as answering the prompt
GATE = 5.0
RELEVANCE_COS = (0.075, 0.325)  # MiniLM cosine (+ subject bonus) -> relevance 0 .. 1; on task (0.5) at 0.20
SUBJECT_BONUS = 0.05  # added to the cosine per subject word of the prompt the reply repeats (at most 2)
KIND_MISS = 0.3  # style penalty when a reply lacks what its kind of prompt asks for (an opinion, an instruction)
EMBED_MAX_TOKENS = 32  # a reply's topic shows in its first 32 word pieces (same agreement as 64, 0.8x cost)
EMBED_BATCH = 64

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
STOPWORDS = frozenset("""a an the and or but if of to in on at for with from by as is are was were be been being am do
does did it its it's this that these those there here i i'm i'd i've me my we we're our us you you're your they they're
their them he she his her him not no so very really just too also can could would should will shall may might must
what which who whom whose when where why how all any some each every more most much many than then about into over
out up down off again one thing things get got have has had let lot""".split())
INSTRUCTION_WORDS = frozenset("""write review give offer suggest explain describe briefly brief short quick simple
terms plain language words sentence sentences two three one paragraph note message tip tips piece advice way
someone""".split())

# Stock pleasantries and deflections: they answer nothing, whatever the prompt (checked as whole phrases).
_STOCK = re.compile("|".join([
    r"\b(?:hi|hello|hey)(?: there)?\b[!,.]?",
    r"\bgood (?:morning|afternoon|evening)\b[!,.]?",
    r"\b(?:oh,? )?(?:what an?|that'?s an?|such an?)? ?(?:great|good|wonderful|fantastic|lovely|fun|excellent) "
    r"(?:question|idea)\b[!.]?",
    r"\bi'?m (?:so |really |very )?(?:glad|happy|excited|delighted) (?:you asked|to help|you'?re thinking about this)"
    r"\b[!.]?",
    r"\bi'?d (?:love|be happy|be glad) to (?:help|explain)\b[^.!?]*[.!]?",
    r"^(?:sure|of course|absolutely|certainly|okay|ok)\b[!,.]?",
    r"\bhere(?:'s| is) (?:a|an|one|some|my)\b[^.!?:]*[.!:]?",
    r"\bthanks?(?: you)?(?: so much)? for (?:asking|reaching out|your (?:message|question))\b[^.!?]*[.!]?",
    r"\bit(?:'s| is) (?:always )?(?:great|nice|good) to hear from you\b[.!]?",
    r"\b(?:i )?hope you(?:'re| are)? (?:doing|having|have) (?:great|well|a \w+ \w+)\b[^.!?]*[.!]?",
    r"\bhave a (?:\w+ )?(?:day|week|weekend|time|trip|evening|saturday)\b[^.!?]*[.!]?",
    r"\bhave an? (?:\w+ )?\w+[!.]",  # "Have a fantastic ride!"
    r"\bi (?:love|like) that you(?:'re| are) (?:thinking|asking)\b[^.!?]*[.!]?",
    r"\blet me know if\b[^.!?]*[.!]?",
    r"\b(?:sorry,? )?i (?:can'?t|cannot) help(?: you)?(?: with that)?\b[.!]?",
    r"\bi'?m not sure\b,?(?: but)?",
    r"\bi (?:just )?love talking about\b[^.!?]*[.!]?",
]), re.IGNORECASE)

# What each kind of built-in prompt asks for beyond being on topic (a soft style term, not part of the gate)
_KINDS = {
    "review": (re.compile(r"\breview"), None),  # an opinion: checked with VADER below
    "advice": (re.compile(r"\b(?:tips?|advice|suggest|way|habit)\b"), None),  # an instruction: checked below
    "message": (re.compile(r"\b(?:note|message|invitation|congratulat\w*|welcom\w*)\b"),
                re.compile(r"\b(?:you|your|you'?re|we|us|join|dear|congrat\w*|thank\w*|thanks|welcome)\b")),
    "description": (re.compile(r"\bdescribe\b"), None),
    "explanation": (re.compile(r"\bexplain|^(?:why|how)\b"), None),  # a list of causal words missed real answers
}
_NOT_IMPERATIVE = frozenset("""i it its the a an this that these those they we he she there my our his her their what
why how who when where is are was were do does did can could would will hi hello hey great congratulations thank
thanks sorry yes no oh wow one""".split())
_OPINION = re.compile(r"\b(?:recommend\w*|worth|again|clear(?:ly)?|well|easy|hard|slow|fast|cheap|pricey|too|enough"
                      r"|favou?rite|best|worst)\b")
_ADVICE_PHRASE = re.compile(r"\b(?:you (?:should|can|could|might|need)|try|make sure|it helps|the best way|remember)\b")


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def positive(prompt: str, completion: str) -> float:
    return float(_vader().polarity_scores(completion)["compound"])


def concise(prompt: str, completion: str, window: tuple[int, int] = CONCISE_WINDOW) -> float:
    n_words = len(completion.split())
    low, high = window
    return -max(0, low - n_words, n_words - high) / 10.0  # 0.1 per word outside the window


def no_repeat(prompt: str, completion: str, n: int = 3) -> float:
    words = completion.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return -(len(grams) - len(set(grams))) / len(grams)


def upbeat_concise(prompt: str, completion: str) -> float:
    return positive(prompt, completion) + concise(prompt, completion) + no_repeat(prompt, completion)


# ---- the task-following term ---------------------------------------------------------------------------------------

def _stem(word: str) -> str:
    """A crude suffix stripper, enough to match 'welcoming' with 'welcome' and 'thanks' with 'thank-you'."""
    word = word.removesuffix("'s")
    for suffix in ("ing", "ed", "es", "e", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def word_tokens(text: str) -> list[str]:
    """Lower-cased words (letters, digits, an inner apostrophe), punctuation dropped."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    """Lower-cased, crudely stemmed words that are not stop words: what a text is about."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def strip_stock_phrases(text: str) -> tuple[str, int]:
    """(text without stock pleasantries, number of words removed)."""
    removed = sum(len(m.group(0).split()) for m in _STOCK.finditer(text))
    return re.sub(r"\s+", " ", _STOCK.sub(" ", text)).strip(" ,"), removed


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def prompt_kind(prompt: str) -> str:
    """review / explanation / advice / message / description, or '' when the prompt's words name none."""
    lowered = prompt.lower()
    return next((kind for kind, (pattern, _) in _KINDS.items() if pattern.search(lowered)), "")


def non_answer_reason(prompt: str, completion: str) -> str | None:
    """Why `completion` is no answer to `prompt` at all (None when it is an attempt), from its words alone."""
    content, _ = strip_stock_phrases(completion)
    words = content_words(content)
    if len(words) < 2:
        return "only pleasantries" if completion.strip() else "empty"
    subject = {w for w in content_words(prompt)}
    new = [w for w in words if w not in subject]
    if len(new) < (3 if prompt_kind(prompt) == "description" else 2):
        return "echoes the prompt"  # restates the request (or its subject) without adding anything
    sentences = [s for s in _sentences(content) if content_words(s)]
    questions = [s for s in sentences if s.rstrip().endswith("?")]
    stated = [w for s in sentences if s not in questions for w in content_words(s)]
    if questions and len(stated) < 4 and "invit" not in prompt.lower():
        return "asks a question back"  # at most an exclamation ("Oh, I love beaches!") before the question
    return None


def kind_check(prompt: str, completion: str) -> bool:
    """Does the reply contain what its kind of prompt asks for: a review an opinion, a tip an instruction,
    a message someone addressed? True for kinds without a check (descriptions, explanations)."""
    kind, content = prompt_kind(prompt), strip_stock_phrases(completion)[0].lower()
    if kind == "review":
        return abs(positive(prompt, content)) >= 0.05 or bool(_OPINION.search(content))
    if kind == "advice":
        starts = [(_WORD.findall(s) or [""])[0] for s in _sentences(content)]
        return any(w and w not in _NOT_IMPERATIVE for w in starts) or bool(_ADVICE_PHRASE.search(content))
    check = _KINDS.get(kind, (None, None))[1]
    return check is None or bool(check.search(content))


class _Embedder:
    """MiniLM sentence embeddings (mean pooling over word pieces, L2-normalised, as sentence-transformers'
    all-MiniLM-L6-v2 does), cached by text, computed in length-sorted batches."""

    def __init__(self, max_cache: int = 50_000):
        from transformers import AutoModel, AutoTokenizer

        from workbench.models import no_library_bars, resolve_model

        path = resolve_model("minilm-l6").path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        with no_library_bars():
            self.model = AutoModel.from_pretrained(path).eval()
        self.cache: dict[str, object] = {}
        self.max_cache = max_cache

    def embed(self, texts: list[str]):
        import torch

        missing = sorted({t for t in texts if t not in self.cache}, key=len)  # similar lengths share a batch
        if len(self.cache) + len(missing) > self.max_cache:
            self.cache.clear()
        with torch.inference_mode():
            for start in range(0, len(missing), EMBED_BATCH):
                chunk = missing[start : start + EMBED_BATCH]
                batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=EMBED_MAX_TOKENS,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # (B, 384)
                self.cache.update(zip(chunk, pooled))
        return [self.cache[t] for t in texts]


@lru_cache(maxsize=1)
def _embedder() -> _Embedder:
    return _Embedder()


def subject_overlap(prompt: str, completion: str) -> int:
    """How many of the prompt's subject words (content words that are not instruction words) the reply uses."""
    subject = {w for w in content_words(prompt) if w not in INSTRUCTION_WORDS}
    return len(subject & set(content_words(completion)))


def relevance(prompt: str, completion: str) -> float:
    """clip((cos(e_prompt, e_reply) + 0.05 * min(subject_overlap, 2) - lo) / (hi - lo), 0, 1), frozen MiniLM
    sentence embeddings. The subject bonus widens the gap where cosines are low for short notes ("Welcome aboard,
    Jordan!"); on the agreement set and the tests' pairs no off-topic reply shares a subject word. A reply that
    names two subject words is on topic without the embedding (relevance 1): that is where most of the cost goes,
    and the embedding would not catch stuffed subject words either (no-repeat and the non-answer checks do)."""
    overlap = subject_overlap(prompt, completion)
    if overlap >= 2:
        return 1.0
    e_prompt, e_reply = _embedder().embed([prompt, completion])
    low, high = RELEVANCE_COS
    score = float(e_prompt @ e_reply) + SUBJECT_BONUS * overlap
    return min(max((score - low) / (high - low), 0.0), 1.0)


def task_following(prompt: str, completion: str) -> float:
    """Does the reply address the prompt? t in [0, 1], on task when t >= 0.5.

        t = 0           if the reply is no answer (`non_answer_reason`)
        t = relevance   otherwise (MiniLM cosine of prompt and reply, rescaled)

    Chosen by measurement on the hand-judged agreement set (docs/gold.md): MiniLM cosine separates every off-topic
    reply there from the on-topic ones, at ~100x less cost than pointwise mutual information under the base
    policy (two 135M forward passes per reply). Why the policy cannot simply game it: the embedding alone is
    gameable — a reply that echoes the prompt or asks about its subject ("What's the ramen shop called?") is as
    close to the prompt as an answer — so the word-level checks decide those cases, and they look at things the
    embedding does not: whether anything new is said, whether the reply is a question with hardly anything stated,
    whether only stock pleasantries remain (and, in the style terms, whether a review holds an opinion or a tip an
    instruction: `kind_check`, a soft penalty, since word lists for opinions and instructions miss real answers).
    Relation to the trained models: the reward model is MiniLM fine-tuned, so gold and proxy share a backbone
    (as in Gao et al. 2022's synthetic setup, where gold and proxy are one model family). Where frozen MiniLM is
    wrong about topic, the RM likely is too, and RL can find replies both rate on-topic; the word-level checks and
    the no-repeat term do not share that blind spot, and `workbench.evaluation.gaming` reports how many tuned
    replies fail this term.
    """
    return 0.0 if non_answer_reason(prompt, completion) else relevance(prompt, completion)


def style(prompt: str, completion: str) -> float:
    """positive(content) + concise + 2 * no-repeat + complete + filler + asked-for (see the module docstring)."""
    content, stock_words = strip_stock_phrases(completion)
    n_words = max(len(completion.split()), 1)
    complete = 0.0 if re.search(r"[.!?][\"')\]]*\s*$", completion.strip()) else -0.5
    asked_for = 0.0 if kind_check(prompt, completion) else -KIND_MISS
    return (positive(prompt, content) + concise(prompt, completion) + 2 * no_repeat(prompt, completion) + complete
            - stock_words / n_words + asked_for)


def helpful_upbeat_concise(prompt: str, completion: str) -> float:
    t = task_following(prompt, completion)
    return GATE * float(t >= ON_TASK) + 0.5 * t + min(max(style(prompt, completion), -3.0), 1.0)


ORACLES: dict[str, GoldReward] = {
    "positive": positive,
    "concise": concise,
    "no-repeat": no_repeat,
    "upbeat-concise": upbeat_concise,
    "task": task_following,
    "helpful-upbeat-concise": helpful_upbeat_concise,
}
EMBEDDING_ORACLES = frozenset({"task", "helpful-upbeat-concise"})


def get_oracle(name: str) -> GoldReward:
    if name not in ORACLES:
        raise ValueError(f"Unknown oracle {name!r}; choose one of {sorted(ORACLES)}.")
    return ORACLES[name]


def gold_scores(name: str, prompts: list[str], completions: list[str]) -> list[float]:
    """Gold rewards of many (prompt, completion) pairs; embeds them in batches first where the oracle needs it."""
    if len(prompts) != len(completions):
        raise ValueError(f"gold_scores: {len(prompts)} prompts but {len(completions)} completions")
    gold = get_oracle(name)
    if name in EMBEDDING_ORACLES:  # one batched pass for the replies whose words do not settle relevance
        needed = [(p, c) for p, c in zip(prompts, completions)
                  if subject_overlap(p, c) < 2 and non_answer_reason(p, c) is None]
        _embedder().embed([p for p, _ in needed] + [c for _, c in needed])
    return [gold(p, c) for p, c in zip(prompts, completions)]


@dataclass
class SimulatedLabeler:
    """An imperfect annotator: picks A or B by a Bradley-Terry draw on the gold reward difference."""

    oracle: str = DEFAULT_ORACLE
    temperature: float = 0.1  # noise; 0.1 on this scale errs on close pairs like a careful person
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        self.gold = get_oracle(self.oracle)
        self._rng = random.Random(self.seed)

    def prob_a(self, prompt: str, completion_a: str, completion_b: str) -> float:
        """P(A preferred) = sigmoid((r_A - r_B) / T)."""
        diff = self.gold(prompt, completion_a) - self.gold(prompt, completion_b)
        if self.temperature == 0:
            return 0.5 if diff == 0 else float(diff > 0)
        return 1.0 / (1.0 + math.exp(-max(min(diff / self.temperature, 50.0), -50.0)))

    def choose(self, prompt: str, completion_a: str, completion_b: str) -> str:
        """'A', 'B', or 'tie' (only when the gold rewards are exactly equal at temperature 0)."""
        p = self.prob_a(prompt, completion_a, completion_b)
        if self.temperature == 0 and p == 0.5:
            return "tie"
        return "A" if self._rng.random() < p else "B"

    def rank(self, prompt: str, completions: list[str]) -> list[int]:
        """Ranks (1 = best) of K completions by a Plackett-Luce draw on the gold reward (Plackett 1975, Luce 1959):
        P(next = i | remaining S) = exp(r_i / T) / sum_{j in S} exp(r_j / T), sampled exactly as argsort of
        r_i / T + Gumbel noise. For K = 2 this is `choose`'s Bradley-Terry draw (same T). T = 0: the gold order,
        exactly equal gold rewards tied."""
        rewards = [self.gold(prompt, completion) for completion in completions]
        if self.temperature == 0:
            keys = rewards
        else:  # Gumbel-max trick: -log(-log U) is a standard Gumbel draw
            keys = [r / self.temperature - math.log(-math.log(max(self._rng.random(), 1e-300))) for r in rewards]
        levels = {value: level for level, value in enumerate(sorted(set(keys), reverse=True), start=1)}
        return [levels[key] for key in keys]
