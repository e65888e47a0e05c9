"""Tests of the ctypes module against the real libtally-client.so, with no agent and with the real tallyd.
Run by ctest (shm_python_test) with TALLY_CLIENT_LIBRARY and TALLYD_PATH set."""

import os
import select
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tally_client  # noqa: E402


def wait_until(predicate, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


class NoAgent(unittest.TestCase):
    def test_calls_are_no_ops(self):
        os.environ["TALLY_SOCKET"] = "/nonexistent/tally.sock"
        with tally_client.Client("py-no-agent") as tally:
            self.assertFalse(tally.attached)
            self.assertIn("no agent", tally.last_error)
            chat = tally.intern(tenant="acme", model="llama")
            self.assertNotEqual(chat, 0)
            self.assertEqual(tally.intern(tenant="acme", model="llama"), chat)
            self.assertEqual(tally.intern(**{"bad=key": "x"}), 0)
            self.assertNotEqual(tally.counter("widgets"), tally_client.COUNTER_INVALID)
            for _ in range(10000):
                tally.record(chat, tokens_in=10, tokens_out=5, ttft_ns=1000)
                tally.add(chat, tally_client.TOKENS_IN, 3)
            self.assertEqual(tally.admit(chat), (tally_client.ALLOW, tally_client.REASON_NO_AGENT))
            # Counted before an agent exists: kept in the client's memory for the agent, events up to the documented
            # bound (1,024), the rest counted as dropped (their counters are kept whole).
            self.assertEqual(tally.dropped, 10000 - 1024)


@unittest.skipUnless(os.environ.get("TALLYD_PATH"), "needs TALLYD_PATH")
class WithAgent(unittest.TestCase):
    def test_attaches_and_records(self):
        with tempfile.TemporaryDirectory() as d:
            config = os.path.join(d, "tally.toml")
            with open(config, "w") as f:
                f.write('[agent]\nnode_id = "py"\n[feed]\nbind = ["tcp://127.0.0.1:*"]\n'
                        f'[metering]\nsocket = "{d}/tally.sock"\nruntime_dir = "{d}/run"\nstate_dir = "{d}/state"\n')
            agent = subprocess.Popen([os.environ["TALLYD_PATH"], "--config", config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                self.assertTrue(wait_until(lambda: os.path.exists(f"{d}/tally.sock")))
                os.environ["TALLY_SOCKET"] = f"{d}/tally.sock"
                os.environ["TALLY_OPEN_TIMEOUT_MS"] = "5000"
                with tally_client.Client("py-agent") as tally:
                    self.assertTrue(tally.attached, tally.last_error)
                    chat = tally.intern(tenant="acme", use_case="chat")
                    for i in range(1000):
                        tally.record(chat, tokens_in=i, tokens_out=1, ttft_ns=1000 + i, duration_ns=5000)
                    tally.set(chat, tally_client.CONTEXT_TOKENS, 4096)
                    self.assertEqual(tally.admit(chat)[0], tally_client.ALLOW)
                    segments = [n for n in os.listdir(f"{d}/run/segments") if n.endswith(".seg")]
                    self.assertEqual(len(segments), 1)
            finally:
                agent.terminate()
                agent.wait(timeout=20)


if __name__ == "__main__":
    unittest.main()
