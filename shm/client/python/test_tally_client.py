"""Tests of the ctypes module against the real libtally-client.so, with no agent and with the real tallyd.
Run by ctest (shm_python_test) with TALLY_CLIENT_LIBRARY and TALLYD_PATH set."""

import mmap
import os
import select
import struct
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
            # No agent, nothing enforced: every reservation granted, commits counted like adds.
            self.assertTrue(tally.reserve(chat, tally_client.TOKENS_OUT, 2**64 - 1))
            tally.commit(chat, tally_client.TOKENS_OUT, 100, 30)
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
                    self.assertTrue(tally.reserve(chat, tally_client.TOKENS_OUT, 10**6))  # no allowance yet
                    with ControlFile(f"{d}/run/segments/{segments[0][:-4]}.ctl") as control:
                        self.check_allowance_and_degrade(tally, chat, control)
            finally:
                agent.terminate()
                agent.wait(timeout=20)

    def check_allowance_and_degrade(self, tally, chat, control):
        """Plays the agent's part in the control file: a grant of 100 tokens out, then a DEGRADE decision."""
        control.set_allowance(chat, tally_client.TOKENS_OUT, 100)
        self.assertTrue(tally.reserve(chat, tally_client.TOKENS_OUT, 60))
        self.assertFalse(tally.reserve(chat, tally_client.TOKENS_OUT, 50))
        tally.commit(chat, tally_client.TOKENS_OUT, 60, 20)  # the 40 not used go back
        self.assertTrue(tally.reserve(chat, tally_client.TOKENS_OUT, 50))
        self.assertTrue(tally.reserve(chat, tally_client.TOKENS_IN, 10**6))  # the grant names tokens out only
        control.set_decision(chat, tally_client.DEGRADE, tally_client.REASON_BUDGET | 256 << 8)
        decision, reason = tally.admit(chat)
        self.assertEqual(decision, tally_client.DEGRADE)
        self.assertEqual(reason & 0xFF, tally_client.REASON_BUDGET)
        self.assertEqual((reason >> 8) & 0xFFFF, 256)


class ControlFile:
    """A segment's control file (<name>.ctl) mapped writable, as tallyd maps it: ControlHeader, then the tables."""

    def __init__(self, path):
        self._file = open(path, "r+b")
        self._map = mmap.mmap(self._file.fileno(), 0)
        self._decisions, self._allowances = struct.unpack_from("<QQ", self._map, 24)  # ControlHeader offsets

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._map.close()
        self._file.close()

    def set_allowance(self, handle, counter, granted):
        struct.pack_into("<Q", self._map, self._allowances + 8 * handle, (counter + 1) << 56 | granted)

    def set_decision(self, handle, decision, reason):
        struct.pack_into("<I", self._map, self._decisions + 4 * handle, decision | reason << 8)


if __name__ == "__main__":
    unittest.main()
