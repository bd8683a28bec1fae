"""The clients' retry policy with an injected sleep (no waiting, no clock): which codes are retried, how many
attempts, and the delays' jitter and cap. Both transports call this one policy (clients.Retry)."""

import random

import pytest

from xray.clients import RETRYABLE, Retry, ServingError

ALL_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
             "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
             "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


def _failing(code, times):
    calls = {"n": 0}

    def send():
        calls["n"] += 1
        if calls["n"] <= times:
            raise ServingError(code, f"injected {code}")
        return "answer"
    return send, calls


@pytest.mark.parametrize("code", ALL_CODES[1:])
def test_only_overload_restart_and_deadline_are_retried(code):
    slept = []
    send, calls = _failing(code, 2)
    retry = Retry(retries=3, backoff=0.5, sleep=slept.append)
    if code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"):
        assert retry(send) == "answer" and calls["n"] == 3 and len(slept) == 2
    else:
        with pytest.raises(ServingError) as info:
            retry(send)
        assert info.value.code == code and calls["n"] == 1 and slept == []
    assert RETRYABLE == {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


def test_it_gives_up_after_the_retries_and_says_how_many_attempts():
    slept = []
    send, calls = _failing("UNAVAILABLE", 100)
    with pytest.raises(ServingError) as info:
        Retry(retries=4, backoff=0.1, sleep=slept.append)(send, describe="localhost:8500")
    assert calls["n"] == 5 and len(slept) == 4 and info.value.attempts == 5
    assert "gave up after 5 attempt(s) to localhost:8500" in info.value.message


def test_delays_are_full_jitter_under_an_exponential_ceiling_and_the_cap():
    random.seed(7)
    retry = Retry(retries=10, backoff=0.5, max_backoff=8.0, sleep=lambda s: None)
    for attempt in range(10):
        ceiling = min(8.0, 0.5 * 2 ** attempt)
        delays = [retry.delay(attempt) for _ in range(400)]
        assert all(0 <= d <= ceiling for d in delays), (attempt, max(delays))
        # Full jitter: spread over [0, ceiling], not a fixed step (both ends reached within 10%).
        assert min(delays) < 0.1 * ceiling and max(delays) > 0.9 * ceiling, (attempt, min(delays), max(delays))
    assert max(retry.delay(30) for _ in range(100)) <= 8.0  # 0.5 * 2**30 would be 17 years


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="retries"):
        Retry(retries=-1)


def test_each_pause_is_the_policy_s_delay_for_that_attempt_and_the_defaults_are_documented():
    slept, asked = [], []
    retry = Retry(retries=3, backoff=0.25, sleep=slept.append)
    retry.delay = lambda attempt: asked.append(attempt) or 10.0 + attempt
    send, calls = _failing("RESOURCE_EXHAUSTED", 3)
    assert retry(send) == "answer" and asked == [0, 1, 2] and slept == [10.0, 11.0, 12.0]
    default = Retry()  # docs/reference.md: 3 retries from 0.5 s, at most 8 s apart
    assert (default.retries, default.backoff, default.max_backoff) == (3, 0.5, 8.0)
    assert Retry(retries=0, backoff=0).delay(5) == 0  # no backoff at all is allowed
    with pytest.raises(ServingError) as info:
        Retry(retries=0, sleep=slept.append)(_failing("UNAVAILABLE", 1)[0])
    assert info.value.message == "injected UNAVAILABLE (gave up after 1 attempt(s) to TF Serving)"
