"""The per-client registration bucket (app/services/admission.py), in process with a fixed clock."""

from __future__ import annotations

import pytest

from app.errors import RegistrationsThrottled
from app.services.admission import Admission


def test_give_back_returns_the_token_of_a_long_forwarded_client() -> None:
    """A client key longer than an address (a forged X-Forwarded-For) is cut to one
    bucket key both when a token is taken and when it is given back."""
    admission = Admission(rate_per_minute=1, burst=1, max_pending=0, clock=lambda: 0.0)
    client = "203.0.113.7, " * 20
    admission.take(client)
    admission.give_back(client)
    admission.take(client)  # the token came back: no throttle
    with pytest.raises(RegistrationsThrottled):
        admission.take(client)
