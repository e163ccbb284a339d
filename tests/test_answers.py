"""The answer cache (app/services/answers.py): stamps, bounds, expiry, the fold memo."""

from __future__ import annotations

from app.services.answers import ENTRY_OVERHEAD_BYTES, Answers, answer_bytes


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_answers(clock: Clock, **options: float) -> Answers:
    return Answers(ttl=10, negative_ttl=5, clock=clock, **options)  # type: ignore[arg-type]


def test_keep_name_after_no_change_is_served() -> None:
    answers = make_answers(Clock())
    stamp = answers.stamp()
    answers.keep_name("alice", b'{"name":"alice"}', stamp)
    assert answers.name_body("alice") == b'{"name":"alice"}'


def test_read_started_before_a_change_is_not_kept() -> None:
    """The race the stamp exists for: a lookup reads SQL (free, or the old record), a
    registration lands and forgets the name, then the lookup tries to keep what it read."""
    answers = make_answers(Clock())
    stamp = answers.stamp()
    answers.changed(folded_names=["alice"])
    answers.keep_name("alice", b"old", stamp)
    answers.keep_missing_name("alice", stamp)
    answers.keep_addr("0" * 40, b"old", stamp)
    answers.keep_missing_addr("1" * 40, stamp)
    assert answers.name_body("alice") is None
    assert not answers.name_missing("alice")
    assert answers.addr_body("0" * 40) is None
    assert not answers.addr_missing("1" * 40)


def test_change_of_an_id_keeps_names() -> None:
    answers = make_answers(Clock())
    answers.keep_name("alice", b"a", answers.stamp())
    answers.keep_addr("0" * 40, b"x", answers.stamp())
    answers.keep_addr("1" * 40, b"y", answers.stamp())
    answers.changed(jami_ids=["0" * 40])
    assert answers.name_body("alice") == b"a"
    assert answers.addr_body("0" * 40) is None
    assert answers.addr_body("1" * 40) == b"y"


def test_change_of_a_name_forgets_reverse_answers() -> None:
    """setAddress or a disown moves a name off an ID this process cannot name."""
    answers = make_answers(Clock())
    answers.keep_name("bob", b"b", answers.stamp())
    answers.keep_addr("0" * 40, b"x", answers.stamp())
    answers.keep_missing_addr("1" * 40, answers.stamp())
    answers.changed(folded_names=["alice"])
    assert answers.name_body("bob") == b"b"
    assert answers.addr_body("0" * 40) is None
    assert not answers.addr_missing("1" * 40)


def test_unkeepable_answer_is_not_kept() -> None:
    answers = make_answers(Clock())
    answers.keep_name("alice", b"pending", None)
    assert answers.name_body("alice") is None


def test_answers_expire_after_their_ttl() -> None:
    clock = Clock()
    answers = make_answers(clock)
    answers.keep_name("alice", b"a", answers.stamp())
    answers.keep_missing_name("carol", answers.stamp())
    clock.now += 5 * 0.75 - 0.01  # below every key's spread-shortened negative ttl
    assert answers.name_body("alice") == b"a"
    assert answers.name_missing("carol")
    clock.now += 0.02 + 5 * 0.25
    assert answers.name_body("alice") == b"a"
    assert not answers.name_missing("carol")
    clock.now += 5
    assert answers.name_body("alice") is None


def test_expiries_of_names_kept_together_are_spread() -> None:
    """Names first asked together do not all expire at once (one SQL read each, queued)."""
    clock = Clock()
    answers = make_answers(clock)
    stamp = answers.stamp()
    for index in range(200):
        answers.keep_name(f"name{index}", b"x", stamp)
    clock.now += 10 * 0.875
    left = sum(answers.name_body(f"name{index}") is not None for index in range(200))
    assert 40 < left < 160


def test_zero_ttl_keeps_nothing() -> None:
    answers = Answers(ttl=0, negative_ttl=0, clock=Clock())
    answers.keep_name("alice", b"a", answers.stamp())
    answers.keep_missing_name("bob", answers.stamp())
    assert answers.name_body("alice") is None
    assert not answers.name_missing("bob")


def test_bound_in_bytes_evicts_least_recently_used() -> None:
    body = b"k" * 1000
    per_entry = len(body) + ENTRY_OVERHEAD_BYTES
    answers = make_answers(Clock(), max_bytes=per_entry * 150)
    for index in range(100):
        answers.keep_name(f"name{index}", body, answers.stamp())
    answers.name_body("name0")  # used again: kept over the others
    for index in range(100, 200):
        answers.keep_name(f"name{index}", body, answers.stamp())
    assert answers.names.entries.currsize <= per_entry * 150
    assert answers.name_body("name0") == body
    assert answers.name_body("name1") is None
    assert answers.name_body("name199") == body


def test_answer_larger_than_its_share_is_not_kept() -> None:
    """A record put on the contract directly may carry a huge key: it never flushes the rest."""
    answers = make_answers(Clock(), max_bytes=1024 * 1024)
    answers.keep_name("small", b"s", answers.stamp())
    answers.keep_name("huge", b"h" * 20_000, answers.stamp())
    assert answers.name_body("huge") is None
    assert answers.name_body("small") == b"s"


def test_fold_memo_computes_once() -> None:
    answers = make_answers(Clock())
    calls: list[bytes] = []

    def compute(segment: bytes) -> str | None:
        calls.append(segment)
        return None if segment == b"bad" else segment.decode().lower()

    assert answers.fold(b"Alice", compute) == "alice"
    assert answers.fold(b"Alice", compute) == "alice"
    assert answers.fold(b"bad", compute) is None
    assert answers.fold(b"bad", compute) is None
    assert calls == [b"Alice", b"bad"]


def test_fold_memo_keeps_no_long_segment() -> None:
    answers = make_answers(Clock())
    for index in range(200):
        assert answers.fold(f"{index:06d}".encode() + b"a" * 60_000, lambda _: None) is None
    assert len(answers._folds) == 0


def test_fold_memo_is_bounded_in_bytes() -> None:
    answers = make_answers(Clock(), max_fold_bytes=64 * 1024)
    for index in range(10_000):
        answers.fold(f"n{index}".encode(), lambda segment: segment.decode())
    assert answers._folds.currsize <= 64 * 1024
    assert 0 < len(answers._folds) < 10_000


def test_answer_bytes_as_jsonresponse_writes_them() -> None:
    assert answer_bytes({"name": "zoë", "addr": ""}) == '{"name":"zoë","addr":""}'.encode()
