#!/usr/bin/env python3
"""The C, C++ and Python examples of docs/workload-integration.md, exactly as a newcomer would copy them: compiled
and linked against the real libtally-client, and run with no agent on the node (every call must then be a cheap
no-op that never fails the program). A doc example that stops compiling or running fails this test.

Usage: doc_examples_test.py SOURCE_DIR CLIENT_LIBRARY CC CXX [EXTRA_FLAGS]
"""
import os
import re
import subprocess
import sys
import tempfile
import unittest

SOURCE_DIR, LIBRARY, CC, CXX = sys.argv[1:5]
EXTRA_FLAGS = sys.argv[5].split() if len(sys.argv) > 5 and sys.argv[5] else []
DOC = os.path.join(SOURCE_DIR, "docs", "workload-integration.md")

# The C examples are a set of functions a server calls (the budgets one uses the basic one's client and label set):
# this drives them once. With no agent nothing is enforced, so the reservation must be granted.
C_DRIVER = r"""
#include <stdint.h>
void setup(void);
void on_request_done(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, int);
int may_start_request(void);
int start_request(uint64_t *max_tokens);
void finish_request(uint64_t max_tokens, uint64_t tokens_out);
void teardown(void);
int main(void) {
  setup();
  if (!may_start_request()) return 3;
  on_request_done(10, 20, 1000, 5000, 700, 1);
  uint64_t max_tokens = 256;
  if (!start_request(&max_tokens)) return 4;
  finish_request(max_tokens, 100);
  teardown();
  return 0;
}
"""


def examples(language, count):
    """The doc's ```language blocks, in order, as one source: there must be `count` of them."""
    text = open(DOC).read()
    blocks = re.findall(r"```" + language + r"\n(.*?)```", text, re.S)
    if len(blocks) != count:
        raise AssertionError(f"expected {count} ```{language} block(s) in {DOC}, found {len(blocks)}")
    return "\n".join(blocks)


class DocExamples(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory(prefix="tally-doc-")
        self.env = dict(os.environ, TALLY_SOCKET=os.path.join(self.dir.name, "no-agent.sock"))
        self.link = ["-I", os.path.join(SOURCE_DIR, "shm", "client", "include"), LIBRARY,
                     "-Wl,-rpath," + os.path.dirname(LIBRARY)]

    def tearDown(self):
        self.dir.cleanup()

    def build_and_run(self, compiler, sources, flags):
        exe = os.path.join(self.dir.name, "example")
        subprocess.run([compiler, *flags, *EXTRA_FLAGS, *sources, "-o", exe, *self.link], check=True)
        result = subprocess.run([exe], env=self.env, timeout=60)
        self.assertEqual(result.returncode, 0)

    def write(self, name, text):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_c_example(self):
        self.build_and_run(CC, [self.write("app.c", examples("c", 2)), self.write("driver.c", C_DRIVER)],
                           ["-std=c11", "-Wall", "-Wextra", "-Werror"])

    def test_cpp_example(self):
        self.build_and_run(CXX, [self.write("main.cpp", examples("cpp", 1))], ["-std=c++17", "-Wall", "-Wextra", "-Werror"])

    def test_python_example(self):
        code = examples("python", 1)
        env = dict(self.env, TALLY_CLIENT_LIBRARY=LIBRARY)
        driver = (
            "import sys, time\n"
            f"sys.path.insert(0, {os.path.join(SOURCE_DIR, 'shm', 'client', 'python')!r})\n"
            "generate = lambda prompt: (time.monotonic_ns(), 42)\n"
            + code +
            "\nhandle('what is the weather like')\n"
        )
        result = subprocess.run([sys.executable, "-c", driver], env=env, timeout=60)
        self.assertEqual(result.returncode, 0)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
