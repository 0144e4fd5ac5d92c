"""How the coordinator pulls a deployment's replies: soon after one arrives, backing off while none does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flwr.app import RecordDict
from flwr.superlink.grid.http_grid import HttpGrid

import server.exchange as exchange


class ScriptedGrid(HttpGrid):
    """A deployment's grid without a SuperLink: pull number k (from 1) brings the replies `arrivals[k]` names."""

    def __init__(self, arrivals: dict[int, list[int]]):  # no connection: nothing here talks to a SuperLink
        self.arrivals, self.pulls = arrivals, 0

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"), has_error=lambda: True)
                for i in self.arrivals.get(self.pulls, [])]


@pytest.fixture
def sleeps(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(exchange.time, "sleep", slept.append)
    return slept


def test_pulls_back_off_while_waiting_and_come_soon_after_a_reply(sleeps):
    messages = [SimpleNamespace(content=RecordDict()) for _ in range(3)]  # what it reads of a message
    # merchant 0 answers at the 7th pull, merchant 1 at the 8th, merchant 2 at the 12th
    replies = exchange.send_and_receive(ScriptedGrid({7: [0], 8: [1], 12: [2]}), messages, timeout=None)
    assert len(replies) == 3
    first, most = exchange.FIRST_POLL, exchange.MAX_POLL
    assert sleeps[:6] == [min(first * 2 ** k, most) for k in range(6)]  # nothing came: 0.05, 0.1, ... up to 0.5
    assert sleeps[5] == most
    assert sleeps[6] == first  # after a reply the next pull comes at once, not after the backed-off pause
    assert sleeps[7] == first  # and again after the next
    assert sleeps[8:] == [first * 2, first * 4, first * 8]  # then backs off again
    assert len(sleeps) == 11  # no sleep after the last reply


def test_a_timeout_ends_the_wait_with_what_came(sleeps, monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(exchange.time, "monotonic", lambda: next(clock))
    messages = [SimpleNamespace(content=RecordDict()) for _ in range(2)]
    replies = exchange.send_and_receive(ScriptedGrid({2: [1]}), messages, timeout=5)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m1"]
