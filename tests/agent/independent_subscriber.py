#!/usr/bin/python3
"""An independent feed subscriber, written from docs/protocol.md alone: Python, pyzmq and protobuf code generated
from the installed .proto files. It shares no code with tallyd or tallyctl, so it checks the documented
contract rather than our own decoder.

Usage: independent_subscriber.py TALLYD_BINARY PROTO_DIR
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

TALLYD, PROTO_DIR = sys.argv[1], sys.argv[2]
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

    def start_agent(self):
        config = os.path.join(self.tmp.name, "tally.toml")
        with open(config, "w") as f:
            f.write('[agent]\nnode_id = "indep-node"\n[feed]\nbind = ["tcp://127.0.0.1:*"]\n'
                    'heartbeat_interval_ms = 20\nusage_interval_ms = 20\n[metering]\nenabled = false\n')
        notify_path = os.path.join(self.tmp.name, "notify.sock")
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


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
