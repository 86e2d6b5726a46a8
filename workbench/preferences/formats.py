"""The forms of preference data TRL's trainers read, brought to the store's one shape: a prompt and two completions.

    form             columns                    one row
    explicit text    prompt, chosen, rejected   {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    explicit chat    prompt, chosen, rejected   {"prompt": [user, ...], "chosen": [assistant], "rejected": [assistant]}
    implicit text    chosen, rejected           {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    implicit chat    chosen, rejected           {"chosen": [user, assistant], "rejected": [user, assistant']}
    HH dialogue      chosen, rejected           {"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello!", "rejected": ...}

An implicit prompt is the longest shared prefix (text) or the shared leading turns (chat), extracted with TRL's own
`trl.data_utils.extract_prompt`, so the store holds exactly what TRL's `DPOTrainer` would train on. A chat prompt
may be a whole conversation ending in a user turn; both sides must then be one assistant reply.

An HH dialogue (Anthropic HH-RLHF: each side the whole "\\n\\nHuman: …\\n\\nAssistant: …" text) is stored as chat
messages, so the policy and the Rank tab see a conversation and the gold labelers the last Human turn. Its prompt
is TRL's prefix up to the last "\\n\\nAssistant:": where both replies begin with the same words TRL's prefix runs
into them ("…Assistant: I"), and a chat prompt ends at the turn. Pairs keep `{"import": {"form": "hh"}}` in
`Pair.generation`, so the implicit export writes the same dialogue text back.
"""

from __future__ import annotations

import re
from collections import Counter

from workbench.generation import conversation_text  # noqa: F401  (re-exported)
from workbench.preferences.sources import RowError

EXPLICIT_TEXT, EXPLICIT_CHAT = "explicit text", "explicit chat"
IMPLICIT_TEXT, IMPLICIT_CHAT = "implicit text", "implicit chat"
HUMAN, ASSISTANT = "\n\nHuman: ", "\n\nAssistant: "
_REPLY = "\n\nAssistant:"  # ends an HH prompt; the reply follows after one space
_TURN = re.compile(r"(\n\nHuman: |\n\nAssistant: )")


class FormError(ValueError):
    """A row that cannot be brought to (prompt, chosen, rejected); `field` names the column at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def row_form(row: dict) -> str:
    """Which form a row is in. Implicit when there is no prompt, or (as TRL's `maybe_extract_prompt` decides) when
    both sides are conversations that do not start with the reply and the prompt is not chat."""
    chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
    chat = isinstance(chosen, list)
    starts_conversation = (chat and isinstance(rejected, list) and bool(chosen) and isinstance(chosen[0], dict)
                           and chosen[0].get("role") != "assistant")
    if prompt is None or (starts_conversation and not isinstance(prompt, list)):
        return IMPLICIT_CHAT if chat else IMPLICIT_TEXT
    return EXPLICIT_CHAT if chat else EXPLICIT_TEXT


def one_form(forms: list[tuple[int, str]]) -> tuple[str | None, list[RowError]]:
    """The main form of a source's rows [(row number, form)], and an error for each row in another: TRL reads a
    dataset in one form. Ties go to the form met first."""
    if not forms:
        return None, []
    main = Counter(form for _, form in forms).most_common(1)[0][0]
    example = next(number for number, form in forms if form == main)
    errors = []
    for number, form in forms:
        if form == main:
            continue
        if main.startswith("explicit") and form.startswith("implicit"):  # most likely a prompt left empty
            errors.append(RowError(number, "prompt", f"missing; every row needs prompt, chosen and rejected, as row "
                                                     f"{example} has (an implicit-form file has no prompt at all)."))
        else:
            errors.append(RowError(number, "(form)", f"{form} form, but the file is in the {main} form (row "
                                                     f"{example}); one file holds one form, as TRL reads it."))
    return main, errors


def extract_text(chosen: str, rejected: str) -> tuple[str | list[dict], str, str, bool]:
    """(prompt, chosen, rejected, is_hh) of an implicit text row; HH dialogues come back as chat messages."""
    from trl.data_utils import extract_prompt

    extracted = extract_prompt({"chosen": chosen, "rejected": rejected})
    prompt = extracted["prompt"]
    # TRL's extraction assumes a shared prefix; without one it can return a prompt that is not a prefix at all.
    if not prompt.strip() or chosen != prompt + extracted["chosen"] or rejected != prompt + extracted["rejected"]:
        raise FormError("chosen", "chosen and rejected share no leading text, so there is no prompt to extract; "
                                  "add a prompt column (explicit form) or make both sides start with the prompt.")
    if chosen.startswith(HUMAN) and rejected.startswith(HUMAN):
        dialogue = _extract_dialogue(chosen, rejected, prompt)
        if dialogue is not None:
            return (*dialogue, True)
    return prompt, extracted["chosen"], extracted["rejected"], False


def _extract_dialogue(chosen: str, rejected: str, prefix: str) -> tuple[list[dict], str, str] | None:
    """An HH row as (messages, chosen reply, rejected reply); None when it is not an exact Human/Assistant dialogue
    (it then stays text, as TRL extracts it)."""
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if side.rstrip().endswith(_REPLY):
            raise FormError(name, "the last Assistant reply is empty; a preference compares two replies.")
    end = prefix.rfind(_REPLY) + len(_REPLY)
    if end < len(_REPLY):
        raise FormError("chosen", "chosen and rejected do not share a conversation up to an Assistant reply; both "
                                  "must hold the same conversation and differ only in the last Assistant reply.")
    replies = chosen[end:], rejected[end:]
    for name, reply in zip(("chosen", "rejected"), replies):
        if HUMAN.rstrip(" ") in reply or _REPLY in reply:
            raise FormError(name, "chosen and rejected differ before their last Assistant reply; a preference "
                                  "compares two replies to one conversation.")
    messages = dialogue_messages(prefix[:end - len(_REPLY)])
    if messages is None or not all(reply.startswith(" ") for reply in replies):
        return None
    return messages, replies[0][1:], replies[1][1:]


def dialogue_messages(text: str) -> list[dict] | None:
    """"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c" as chat messages ending in a user turn; None unless the
    text is exactly alternating Human/Assistant turns, starting and ending with Human."""
    parts = _TURN.split(text)
    if parts[0] or len(parts) < 3:
        return None
    markers, contents = parts[1::2], parts[2::2]
    expected = [HUMAN if index % 2 == 0 else ASSISTANT for index in range(len(markers))]
    if markers != expected or markers[-1] != HUMAN:
        return None
    return [{"role": "user" if marker == HUMAN else "assistant", "content": content}
            for marker, content in zip(markers, contents)]


def dialogue_text(messages: list[dict]) -> str:
    """Chat messages back to HH text, ending with the "\\n\\nAssistant:" a reply follows."""
    return "".join((HUMAN if m["role"] == "user" else ASSISTANT) + m["content"] for m in messages) + _REPLY


def extract_chat(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen reply, rejected reply) of an implicit chat row: TRL's shared leading turns, and
    one assistant message left on each side."""
    from trl.data_utils import extract_prompt

    extracted = extract_prompt({"chosen": chosen, "rejected": rejected})
    prompt = extracted["prompt"]
    if not prompt:
        raise FormError("chosen", "chosen and rejected do not start with the same turn, so they share no prompt; "
                                  "both must hold the same conversation and differ only in the last assistant reply.")
    replies = []
    for name in ("chosen", "rejected"):
        rest = extracted[name]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            at = len(prompt) + 1
            raise FormError(name, f"after the {len(prompt)} shared turn(s), {name} has {len(rest)} message(s) "
                                  f"(from message {at}); it must end in exactly one assistant reply the other side "
                                  "does not share.")
        replies.append(rest[0]["content"])
    if prompt[-1]["role"] != "user":
        raise FormError("chosen", f"the shared turns end with a {prompt[-1]['role']!r} message; a prompt ends with "
                                  "the user turn the two replies answer.")
    return prompt, replies[0], replies[1]


def implicit_sides(prompt: str | list[dict], chosen: str, rejected: str, hh: bool,
                   chat: bool) -> tuple[str | list[dict], str | list[dict]]:
    """A pair back in the implicit form: each side holds the prompt and its completion."""
    if hh and isinstance(prompt, list) and not chat:
        return dialogue_text(prompt) + " " + chosen, dialogue_text(prompt) + " " + rejected
    if chat:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return ([*messages, {"role": "assistant", "content": chosen}],
                [*messages, {"role": "assistant", "content": rejected}])
    return prompt + chosen, prompt + rejected
