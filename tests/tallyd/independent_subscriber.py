#!/usr/bin/python3
"""An independent feed subscriber, written from docs/protocol.md alone: Python, pyzmq and protobuf code generated
from the installed .proto files. It shares no code with tallyd or tallyctl, so it checks the documented
contract rather than our own decoder.

The second test follows usage the way docs/protocol.md says (the latest total per workload, label set and
counter; a snapshot replaces the picture) while a workload reports through the client library, once with every
message and once with every third: both end with exactly what the workload wrote.

Usage: independent_subscriber.py TALLYD_BINARY PROTO_DIR CLIENT_LIBRARY CLIENT_PYTHON_DIR
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import zmq

TALLYD, PROTO_DIR, CLIENT_LIBRARY, CLIENT_PYTHON = sys.argv[1:5]
DEADLINE_S = 20.0


def generate_python_schema(out_dir):
    protos = [os.path.join("tally/v1", f) for f in os.listdir(os.path.join(PROTO_DIR, "tally/v1"))
              if f.endswith(".proto")]
    subprocess.run(["protoc", "-I", PROTO_DIR, "--python_out", out_dir] + protos, check=True)
    sys.path.insert(0, out_dir)


class IndependentSubscriber(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="tally-indep-")
        generate_python_schema(cls.tmp.name)
        from tally.v1 import feed_pb2  # noqa: generated above
        cls.feed_pb2 = feed_pb2

    def start_agent(self, metering=None):
        state = tempfile.mkdtemp(dir=self.tmp.name)
        config = os.path.join(state, "tally.toml")
        with open(config, "w") as f:
            f.write(f'[agent]\nnode_id = "indep-node"\nstate_dir = "{state}"\n[feed]\nbind = ["tcp://127.0.0.1:*"]\n'
                    'heartbeat_interval_ms = 20\nusage_interval_ms = 20\nsnapshot_interval_ms = 200\n'
                    '[probes]\npin_dir = ""\n')
            if metering is None:
                f.write('[metering]\nenabled = false\n')
            else:
                f.write(f'[metering]\nsocket = "{metering}/tally.sock"\nruntime_dir = "{metering}"\n'
                        'drain_interval_ms = 10\n')
        notify_path = os.path.join(state, "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(DEADLINE_S)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path, JOURNAL_STREAM="")
        agent = subprocess.Popen([TALLYD, "--config", config], env=env, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (agent.poll() is None and agent.kill(), agent.wait()))
        # docs/protocol.md: READY=1 comes with STATUS=... "feed bound to ENDPOINT; ..."
        while True:
            datagram = notify.recv(4096).decode()
            lines = datagram.split("\n")
            if "READY=1" in lines:
                status = next(line for line in lines if line.startswith("STATUS="))
                endpoint = status.split("feed bound to ", 1)[1].split(";")[0].split(",")[0]
                notify.close()
                os.unlink(notify_path)
                return agent, endpoint

    def receive(self, sub):
        self.assertTrue(sub.poll(int(DEADLINE_S * 1000)), "feed went quiet")
        frames = sub.recv_multipart()
        self.assertEqual(len(frames), 2, "a feed message is exactly two frames")
        envelope = self.feed_pb2.Envelope()
        envelope.ParseFromString(frames[1])
        return frames[0].decode(), envelope

    def test_decodes_the_feed_as_documented(self):
        agent, endpoint = self.start_agent()
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        previous = None
        kinds = set()
        for _ in range(20):
            topic, envelope = self.receive(sub)
            # The topic frame names the body's kind.
            self.assertEqual(topic, envelope.WhichOneof("body"))
            self.assertEqual(envelope.node_id, "indep-node")
            self.assertEqual(len(envelope.instance_id), 36)
            if previous is not None:
                self.assertEqual(envelope.instance_id, previous.instance_id)
                self.assertEqual(envelope.sequence, previous.sequence + 1)
            previous = envelope
            kinds.add(topic)
        self.assertIn("heartbeat", kinds)
        self.assertIn("usage", kinds)

        # SIGTERM: a final UsageReport, then exit status 0.
        agent.send_signal(signal.SIGTERM)
        end = time.monotonic() + DEADLINE_S
        final = False
        while time.monotonic() < end and not final:
            topic, envelope = self.receive(sub)
            final = topic == "usage" and envelope.usage.final
        self.assertTrue(final, "no final usage report")
        self.assertEqual(agent.wait(timeout=DEADLINE_S), 0)
        sub.close()
        ctx.term()

    @staticmethod
    def follow(picture, envelope):
        """docs/protocol.md, "How to follow it": the latest total per counter; a snapshot replaces the picture."""
        report = envelope.usage
        if report.snapshot:
            picture.clear()
        for w in report.workloads:
            for t in w.totals:
                picture[(w.workload_id, "", t.name, t.source, t.kind)] = t.total
            for ls in w.label_sets:
                labels = "\n".join(f"{l.key}={l.value}" for l in ls.labels)
                for t in ls.totals:
                    picture[(w.workload_id, labels, t.name, t.source, t.kind)] = t.total

    def test_one_message_in_three_gives_the_same_totals(self):
        runtime = tempfile.mkdtemp(dir=self.tmp.name)
        agent, endpoint = self.start_agent(metering=runtime)
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"usage")
        sub.connect(endpoint)
        os.environ["TALLY_CLIENT_LIBRARY"] = CLIENT_LIBRARY
        os.environ["TALLY_SOCKET"] = os.path.join(runtime, "tally.sock")
        os.environ["TALLY_OPEN_TIMEOUT_MS"] = "5000"
        sys.path.insert(0, CLIENT_PYTHON)
        import tally_client  # noqa: the workload side, through the real shared library

        every, third = {}, {}
        deltas = {}
        seen = 0

        def take(envelope):
            nonlocal seen
            seen += 1
            self.follow(every, envelope)
            if envelope.kind_sequence % 3 == 0 or envelope.usage.final:
                self.follow(third, envelope)
            for w in envelope.usage.workloads:
                for ls in w.label_sets:
                    labels = "\n".join(f"{l.key}={l.value}" for l in ls.labels)
                    for t in ls.totals:
                        key = (w.workload_id, labels, t.name, t.source, t.kind)
                        deltas[key] = deltas.get(key, 0) + t.delta

        # The subscription is live once a first report arrives: from then on no report escapes us.
        self.assertTrue(sub.poll(int(DEADLINE_S * 1000)), "no usage report")
        take(self.feed_pb2.Envelope.FromString(sub.recv_multipart()[1]))
        wrote = {}
        with tally_client.Client("indep-writer") as tally:
            self.assertTrue(tally.attached, tally.last_error)
            handles = {team: tally.intern(team=team, model="m") for team in ("a", "b", "c")}
            first = None
            for i in range(300):
                team = ("a", "b", "c")[i % 3] if i % 7 else "a"
                tally.add(handles[team], tally_client.TOKENS_IN, i + 1)
                wrote[team] = wrote.get(team, 0) + i + 1
                while sub.poll(0):
                    topic, payload = sub.recv_multipart()
                    envelope = self.feed_pb2.Envelope.FromString(payload)
                    if first is None:
                        first = envelope
                    take(envelope)
                time.sleep(0.002)  # spreads the writes over many reports; nothing waits on it
            agent.send_signal(signal.SIGTERM)
            end = time.monotonic() + DEADLINE_S
            final = False
            while not final and time.monotonic() < end:
                if sub.poll(100):
                    envelope = self.feed_pb2.Envelope.FromString(sub.recv_multipart()[1])
                    take(envelope)
                    final = envelope.usage.final
            self.assertTrue(final, "no final usage report")
        self.assertEqual(agent.wait(timeout=DEADLINE_S), 0)
        self.assertGreater(seen, 20, "the writes should span many reports")

        mine = {k: v for k, v in every.items() if k[2] == "tokens_in"}
        self.assertEqual({k[1]: v for k, v in mine.items()},
                         {f"team={team}\nmodel=m": total for team, total in wrote.items()})
        self.assertEqual({k: v for k, v in third.items() if k[2] == "tokens_in"}, mine)
        # We saw every report since before the first write: the deltas add up to the totals.
        self.assertEqual({k: v for k, v in deltas.items() if k[2] == "tokens_in"}, mine)
        sub.close()
        ctx.term()


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
