"""What a failed trial's record keeps of its error: one readable sentence."""
from __future__ import annotations

from kdsearch.errors import error_sentence

RAY_TRACEBACK = """Failure # 1 (occurred at 2026-12-03_21:40:02)
ray::ImplicitFunc.train() (pid=1234, ip=127.0.0.2, actor_id=abc, repr=tune_trial)
  File "/site-packages/ray/tune/trainable/trainable.py", line 331, in train
    raise skipped from exception_cause(skipped)
  File "/site-packages/kdsearch/distributed.py", line 271, in on_epoch
    epoch_hook(spec.trial_key, int(record["epoch"]), session.rank, session.in_train)
RuntimeError: injected failure after epoch 2
"""

ACTOR_DIED = """ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
\tactor_id: 0123
\tpid: 4321
Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error code 2.
"""


def test_the_innermost_exception_line_is_kept_without_the_traceback():
    assert error_sentence(RAY_TRACEBACK) == "RuntimeError: injected failure after epoch 2"
    assert error_sentence(ACTOR_DIED) == "ActorDiedError: The actor died unexpectedly before finishing this task."


def test_a_user_error_keeps_its_message_and_a_long_one_is_cut_at_a_word():
    text = "Traceback ...\nkdsearch.errors.UserError: --textures x: no such folder; give the DTD images folder"
    assert error_sentence(text) == "--textures x: no such folder; give the DTD images folder"
    long = "RuntimeError: " + "word " * 200
    short = error_sentence(long, limit=100)
    assert len(short) <= 102 and short.endswith(" …") and "\n" not in short and "wor …" not in short


def test_text_without_an_exception_line_gives_its_last_line():
    assert error_sentence("worker died\nno more\n") == "no more"
    assert "see Ray's logs" in error_sentence("  \n")
