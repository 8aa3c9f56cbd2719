"""RFC 7339 loss-based overload control between the LB and the registrars (sans-IO parts):
the server's loss from its backlog, the client's refusals from the server's answers."""

from __future__ import annotations

import contextlib

import pytest

from sipfleet.core.overload import LossControl, LossFeedback, without_loss_answer
from sipfleet.sip import ParseError
from sipfleet.sip.via import parse_via

HIGH, LOW = 1000, 100
SERVER = ("10.0.0.5", 5060)
ALL = "any request"  # drawn against a loss of 100 %: always refused


def control() -> LossControl:
    return LossControl(high=HIGH, low=LOW, period=0.05, sustain=0.1, cut=0.8, recovery=0.05)


def params(text: str) -> dict[str, str | None]:
    return parse_via(f"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1;oc{text}").params


def test_a_backlog_that_stays_full_asks_for_more_loss_each_period() -> None:
    loss = control()
    assert loss.via_params(0.0) == {}  # never overloaded: nothing said
    loss.observe(0.0, HIGH)
    loss.observe(0.05, HIGH)
    assert loss.loss == 0  # above the mark for less than ``sustain``: a burst, perhaps
    loss.observe(0.06, HIGH)  # within the period: not acted on
    loss.observe(0.1, HIGH)
    assert loss.loss == 20
    loss.observe(0.2, HIGH * 2)  # and again at each check while it lasts
    assert loss.loss == 36
    loss.observe(0.3, HIGH * 17 // 10)  # full but draining (15 % less): held
    assert loss.loss == 36
    loss.observe(0.4, HIGH // 2)  # below the mark and not growing: recovers slowly
    assert loss.loss == 31
    loss.observe(0.5, HIGH // 2 + 100)  # below the mark but growing: held
    assert loss.loss == 31
    loss.observe(0.6, LOW - 1)  # below the low mark: recovers
    assert loss.loss == 26


def test_a_backlog_that_drains_is_caught_up_with_not_an_excess() -> None:
    loss = control()
    loss.observe(0.0, HIGH * 4)
    loss.observe(0.1, HIGH * 3)  # a quarter less: draining
    loss.observe(0.2, HIGH * 2)
    assert loss.loss == 0
    loss.observe(0.3, HIGH * 2)  # stopped draining: an excess, once it lasts
    loss.observe(0.4, HIGH * 2)
    assert loss.loss == 20


def test_one_checks_dip_does_not_start_the_wait_for_the_first_cut_again() -> None:
    """A process reads in bursts: the backlog of a growing queue dips at one check."""
    loss = LossControl(high=HIGH, low=LOW, period=0.05, sustain=0.2)
    for at, backlog in ((0.0, 2000), (0.05, 3000), (0.1, 2500), (0.15, 3500)):
        loss.observe(at, backlog)
    assert loss.loss == 0  # not yet ``sustain`` above the mark
    loss.observe(0.25, 4000)
    assert loss.loss == 20  # 0.25 s above it, growing over the window: cut


def overloaded(loss: LossControl, at: float = 0.0) -> None:
    loss.observe(at, HIGH)
    loss.observe(at + 0.1, HIGH)


def test_the_answer_names_loss_algorithm_validity_and_sequence() -> None:
    loss = control()
    overloaded(loss, 1.0)
    assert loss.via_params(1.12) == {
        "oc": "20",
        "oc-algo": '"loss"',
        "oc-validity": "500",
        "oc-seq": "1.100",  # the check that set the loss: it names what it says
    }


def test_the_text_after_a_bare_oc_says_the_same_and_changes_only_at_a_check() -> None:
    loss = control()
    overloaded(loss, 1.0)
    assert loss.oc_value(1.12) == '=20;oc-algo="loss";oc-validity=500;oc-seq=1.100'
    assert loss.oc_value(1.14) == loss.oc_value(1.12)
    loss.observe(1.2, HIGH * 2)
    assert loss.oc_value(1.21) == '=36;oc-algo="loss";oc-validity=500;oc-seq=1.200'
    assert control().oc_value(1.0) == ""  # nothing asked: nothing said


def test_after_the_overload_zero_is_said_for_one_validity_period_then_nothing() -> None:
    loss = control()
    overloaded(loss)
    for n in range(2, 7):
        loss.observe(n * 0.1, 0)
    assert loss.loss == 0
    assert loss.via_params(0.6)["oc"] == "0"
    assert loss.via_params(0.5 + 0.5) == {}


def test_the_loss_never_reaches_everything() -> None:
    loss = control()
    for n in range(100):
        loss.observe(n * 0.1, HIGH * 10)
    assert loss.loss == 95  # some new requests still reach it: the signal keeps coming


def draws(count: int, attempt: int = 1) -> list[str]:
    """Call-ID and top Via of ``count`` REGISTERs, as the LB draws from them."""
    return [f"reg-{n}@10.1.0.9 SIP/2.0/UDP 10.1.0.9;branch=z9hG4bK-{attempt}" for n in range(count)]


def test_a_client_refuses_the_asked_share_and_a_retransmission_as_its_original() -> None:
    feedback = LossFeedback()
    feedback.heard(SERVER, params('=30;oc-algo="loss";oc-validity=500;oc-seq=1.0'), 0.0)
    refused = [feedback.refuses(SERVER, 0.1, draw) for draw in draws(2000)]
    assert 540 <= sum(refused) <= 660  # 30 % of 2,000, give or take the hash's spread
    again = [feedback.refuses(SERVER, 0.2, draw) for draw in draws(2000)]
    assert again == refused  # retransmissions: the same answers
    next_attempt = [feedback.refuses(SERVER, 0.2, draw) for draw in draws(2000, attempt=2)]
    assert next_attempt != refused  # a new branch: a new draw
    assert not feedback.refuses(("10.0.0.6", 5060), 0.1, draws(1)[0])  # another server


def test_the_ask_lapses_after_its_validity_and_zero_ends_it_at_once() -> None:
    feedback = LossFeedback()
    feedback.heard(SERVER, params("=100;oc-validity=200;oc-seq=1"), 0.0)
    assert feedback.refuses(SERVER, 0.19, ALL)
    assert not feedback.refuses(SERVER, 0.2, ALL)
    assert not feedback
    feedback.heard(SERVER, params("=100;oc-seq=2"), 1.0)  # no validity: 500 ms
    assert feedback.refuses(SERVER, 1.49, ALL)
    feedback.heard(SERVER, params("=0;oc-seq=3"), 1.1)
    assert not feedback.refuses(SERVER, 1.2, ALL)


def via(text: str, before: str = "") -> str:
    """Our Via as a server answers it: ``before`` among our own parameters, then ``oc``
    given ``text``."""
    return f"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1{before};lbf=tok;oc{text}"


@pytest.mark.parametrize(
    ("text", "before"),
    [
        ('=30;oc-algo="loss";oc-validity=500;oc-seq=1.0', ""),  # as LossControl writes it
        ("=30;oc-seq=1.0", ";oc-validity=200"),  # a server that wrote one before ``oc``
        ("=30;oc-seq=1.0", ';oc-algo="rate"'),
        ('=30;oc-algo="loss,rate";received=10.0.0.1;oc-seq=1.0', ""),
        ("=101;oc-seq=1.0", ""),
        ('=30;oc-algo="loss', ""),  # an unterminated quote: not read at all
    ],
)
def test_the_text_of_our_via_is_read_as_its_parameters(text: str, before: str) -> None:
    """``heard_via`` (the LB's reading of every answer under overload) asks what
    ``heard`` of the parsed Via asks, the second time from its memory."""
    from_text, from_params = LossFeedback(), LossFeedback()
    with contextlib.suppress(ParseError):  # then nothing is heard
        from_params.heard(SERVER, parse_via(via(text, before)).params, 0.0)
    for now in (0.0, 0.3):
        from_text.heard_via(SERVER, via(text, before), now)
    assert from_text.asked(SERVER)[::2] == from_params.asked(SERVER)[::2]
    assert from_text.refuses(SERVER, 0.7, ALL) == from_params.refuses(SERVER, 0.4, ALL)


def test_the_same_answer_heard_again_keeps_the_loss_and_a_new_one_replaces_it() -> None:
    feedback = LossFeedback()
    assert feedback.heard_via(SERVER, via("=100;oc-validity=200;oc-seq=1"), 0.0)
    assert not feedback.heard_via(SERVER, via("=100;oc-validity=200;oc-seq=1"), 0.15)
    assert feedback.refuses(SERVER, 0.3, ALL)  # the validity counts from the last answer
    assert feedback.heard_via(SERVER, via("=0;oc-seq=2"), 0.31)
    assert not feedback.refuses(SERVER, 0.32, ALL)
    assert not feedback.heard_via(SERVER, via(""), 0.4)  # no answer: nothing heard


def test_our_marks_are_read_without_the_servers_answer() -> None:
    answered = via('=30;oc-algo="loss";oc-validity=500;oc-seq=1.0')
    assert without_loss_answer(answered) == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1;lbf=tok"
    assert without_loss_answer(via("")) == via("")


def test_an_older_sequence_does_not_overwrite_a_newer_one() -> None:
    feedback = LossFeedback()
    feedback.heard(SERVER, params("=100;oc-seq=5.5"), 0.0)
    feedback.heard(SERVER, params("=0;oc-seq=5.4"), 0.01)  # a late, reordered answer
    assert feedback.refuses(SERVER, 0.02, ALL)


@pytest.mark.parametrize(
    "text",
    ["=101", "=-5", "=abc", '=30;oc-algo="rate"', "=1e3", ""],
)
def test_values_out_of_range_or_another_algorithm_are_ignored(text: str) -> None:
    feedback = LossFeedback()
    feedback.heard(SERVER, params(text), 0.0)
    assert not feedback
    assert not feedback.refuses(SERVER, 0.0, ALL)


def test_the_servers_remembered_are_bounded() -> None:
    feedback = LossFeedback(max_servers=2)
    for port in range(5):
        feedback.heard(("10.0.0.5", port), params("=100;oc-seq=1"), 0.0)
    asked = [port for port in range(5) if feedback.refuses(("10.0.0.5", port), 0.0, ALL)]
    assert asked == [0, 1]


def test_a_sequence_that_is_not_a_finite_number_cannot_pin_the_loss() -> None:
    feedback = LossFeedback()
    feedback.heard(SERVER, params("=50;oc-seq=inf"), 0.0)
    assert feedback  # the loss is taken, its sequence read as 0
    feedback.heard(SERVER, params("=0;oc-seq=1"), 0.01)
    assert not feedback


def test_the_clients_own_backlog_refuses_a_share_for_every_server() -> None:
    own = control()
    feedback = LossFeedback(own=own)
    assert not feedback
    overloaded(own)  # the LB's own backlog stays full: 20 % of new requests
    assert feedback
    refused = [feedback.refuses(("10.0.0.7", 5060), 0.2, draw) for draw in draws(2000)]
    assert 340 <= sum(refused) <= 460
    feedback.heard(SERVER, params("=60;oc-seq=1"), 0.2)  # a server asks for more: its share
    asked = [feedback.refuses(SERVER, 0.3, draw) for draw in draws(2000)]
    assert 1080 <= sum(asked) <= 1320


def test_a_refusal_is_counted_as_the_servers_or_as_the_clients_own() -> None:
    own = control()
    feedback = LossFeedback(own=own)
    overloaded(own)  # our own share: 20 %
    feedback.heard(SERVER, params("=10;oc-seq=1"), 0.2)  # the server's: 10 %
    for draw in draws(2000):
        if feedback.refuses(SERVER, 0.3, draw):
            feedback.count_refusal()
    assert 340 <= feedback.refused <= 460  # the larger share, 20 %
    assert 140 <= feedback.refused_own <= 260  # the part beyond the server's 10 %
