"""An in-process Flower Grid that hands messages straight to ClientApps: the real apps without Ray (tests, attack benchmarks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class InProcessGrid(Grid):
    """Nodes 1..n each run `client_app` with node config {partition-id, num-partitions} and their own state;
    `tamper(node_id, reply)` may change or drop (return None) a node's reply, standing in for a faulty merchant."""

    sequential = True  # merchants answer one after another (timings add up, unlike a deployment)

    def __init__(self, client_app, num_nodes: int, *, tamper: Callable[[int, Message], Message | None] | None = None,
                 node_configs: list[dict] | None = None):
        self.client_app = client_app
        configs = node_configs or [{"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)]
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config={})
            for node, config in enumerate(configs, start=1)
        }
        self.tamper = tamper
        # a real ServerApp process has these set by Flower; messages need them
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        self.last_sent: Message | None = None  # only the last: keeping every message held every round's weights
        self._next_id = 0

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return getattr(self, "_run", None)

    def create_message(self, content, message_type, dst_node_id, group_id="", ttl=None) -> Message:
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self):
        return []

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            self._next_id += 1
            msg.metadata.__dict__["_message_id"] = f"m{self._next_id}"  # what pushing to a SuperLink assigns
            self.last_sent = msg
            reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            if self.tamper is not None:
                reply = self.tamper(msg.metadata.dst_node_id, reply)
            if reply is not None:
                replies.append(reply)
        return replies
