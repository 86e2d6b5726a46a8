"""A separate process writing labels, for the concurrency and kill -9 tests of PreferenceStore.

    python prefs_writer.py DB batch FIRST LAST RESEND_FIRST RESEND_LAST
        prints "ready", waits for a line on stdin, sends submissions FIRST..LAST-1 and re-sends
        RESEND_FIRST..RESEND_LAST-1 (interleaved), prints "done".
    python prefs_writer.py DB loop
        sends submissions 0, 1, 2, ... forever, printing each submission_id once add_label has returned.
"""

import sys

from workbench.preferences.store import PreferenceStore

N_PAIRS = 20
ANNOTATORS = ("ann0", "ann1", "ann2")


def submission(index: int) -> dict:
    """The add_label arguments of submission `index`: the same wherever it is (re-)sent from."""
    return {"pair_id": f"pair{index % N_PAIRS}", "choice": ("A", "B", "tie", "both_bad", "skip")[index % 5],
            "annotator": ANNOTATORS[index % len(ANNOTATORS)], "submission_id": f"sub-{index}",
            "score_a": index / 7, "score_b": None, "comment": f"comment {index}" if index % 2 else None}


def main(argv: list[str]) -> None:
    store = PreferenceStore(argv[0])
    if argv[1] == "loop":
        index = 0
        while True:
            label = store.add_label(**submission(index))
            print(label.submission_id, flush=True)  # the acknowledgement: add_label returned after COMMIT
            index += 1
    first, last, resend_first, resend_last = map(int, argv[2:6])
    print("ready", flush=True)
    sys.stdin.readline()
    for own, resent in zip(range(first, last), range(resend_first, resend_last)):
        store.add_label(**submission(own))
        store.add_label(**submission(resent))
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
