"""The merchant's Flower ClientApp: hands each message to the round code (client/rounds.py)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.rounds import handle

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(msg, context)


@app.query("secagg_keys")
def secagg_keys(msg: Message, context: Context) -> Message:
    """Distributed DP, stage 1 of a round: the policy and budget are checked, then two public keys go out."""
    return _handle(msg, context)


@app.query("secagg_shares")
def secagg_shares(msg: Message, context: Context) -> Message:
    """Stage 2: shares of the merchant's secrets, encrypted to each other merchant."""
    return _handle(msg, context)


@app.train("distributed")
def train_distributed(msg: Message, context: Context) -> Message:
    """Stage 3: one central DP-SGD step's share (clipped, noised, masked); the ledger pays before it leaves."""
    return _handle(msg, context)


@app.query("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    """Stage 4: the shares that unmask the sum of the merchants whose vectors arrived."""
    return _handle(msg, context)


def _handle(msg: Message, context: Context) -> Message:
    # the same code answers in simulation, in a process Flower starts per message, and in a merchant daemon's
    # warm round worker (client/worker.py), which takes its SuperNode's tasks without this app
    return handle(msg, context)
