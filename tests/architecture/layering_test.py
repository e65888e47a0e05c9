#!/usr/bin/env python3
"""The pipeline's layering, enforced: docs/architecture.md names every code folder with its layer
(base < sources < ledger < sinks < programs). A folder may include headers from, and link the targets of, folders of
its own layer or a lower one. This test reads that table and fails when

  - a source file includes a header of a folder above its own,
  - a CMakeLists.txt links a target of a folder above its own,
  - a folder holding code is missing from the table (a new folder must say where it stands), or the table names a
    folder or target that does not exist.

Usage: layering_test.py SOURCE_DIR. It first checks itself against a made-up tree in which shm includes the ledger,
so that a checker that stopped finding violations fails too.
"""

import os
import re
import sys
import unittest

LAYERS = ["base", "sources", "ledger", "sinks", "programs"]
CODE_ROOTS = ["agent", "collectors", "shm", "ebpf", "proto"]
CODE_SUFFIXES = (".c", ".cpp", ".h", ".hpp", ".proto")
# Includes of generated headers, by the folder that generates them.
GENERATED = [("tally/v1/", "proto"), ("ebpf/", "ebpf"), ("tally/client", "shm/client"), ("agent/base/version.hpp", "agent/base")]

ROW = re.compile(r"^\|\s*(\w+)\s*\|\s*`([^`]+)/`\s*\|\s*`([^`]+)`\s*\|")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
LINK = re.compile(r"target_link_libraries\s*\(\s*(\S+)([^)]*)\)", re.S)
TARGET = re.compile(r"tally::(\w+)")


def read_table(architecture_text):
    """folder -> (layer, target) from docs/architecture.md."""
    folders = {}
    for line in architecture_text.splitlines():
        m = ROW.match(line)
        if m and m.group(1) in LAYERS:
            folders[m.group(2)] = (m.group(1), m.group(3))
    return folders


def folder_of(path, folders):
    """The table's folder holding `path` (the longest prefix), or None."""
    best = None
    for folder in folders:
        if path == folder or path.startswith(folder + "/"):
            if best is None or len(folder) > len(best):
                best = folder
    return best


def include_folder(included, includer_folder, folders, exists):
    for prefix, folder in GENERATED:
        if included.startswith(prefix) and not exists(included):
            return folder
    if not exists(included):
        return includer_folder  # relative to the includer ("tally_abi.h" from ebpf/), or a system header
    return folder_of(included, folders)


def check(files, folders, exists):
    """files: {relative path: text}. Returns the list of violations."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    targets = {target: folder for folder, (layer, target) in folders.items()}
    problems = []
    code_folders = set()
    for path, text in sorted(files.items()):
        if path.split("/")[0] not in CODE_ROOTS:
            continue
        folder = folder_of(path, folders)
        if path.endswith(CODE_SUFFIXES):
            if folder is None:
                problems.append(f"{path}: its folder is not in docs/architecture.md")
                continue
            code_folders.add(folder)
            for included in INCLUDE.findall(text):
                target_folder = include_folder(included, folder, folders, exists)
                if target_folder and rank[folders[target_folder][0]] > rank[folders[folder][0]]:
                    problems.append(f"{path}: includes {included} ({target_folder}, {folders[target_folder][0]}) "
                                    f"from {folder} ({folders[folder][0]})")
        elif path.endswith("CMakeLists.txt") and folder is not None:
            for _, arguments in LINK.findall(text):
                for target in TARGET.findall(arguments):
                    if target == "build_options":
                        continue
                    linked = targets.get(f"tally::{target}")
                    if linked is None:
                        problems.append(f"{path}: links tally::{target}, which docs/architecture.md does not name")
                    elif rank[folders[linked][0]] > rank[folders[folder][0]]:
                        problems.append(f"{path}: links tally::{target} ({linked}, {folders[linked][0]}) "
                                        f"from {folder} ({folders[folder][0]})")
    for folder in folders:
        if folder not in code_folders:
            problems.append(f"docs/architecture.md names {folder}/, which holds no code")
    return problems


class CheckerFindsViolations(unittest.TestCase):
    """The checker itself, on a made-up tree."""

    TABLE = ("| layer | folder | target | job |\n|---|---|---|---|\n"
             "| base | `agent/base/` | `tally::base` | x |\n"
             "| sources | `shm/segments/` | `tally::shm_segments` | x |\n"
             "| ledger | `agent/ledger/` | `tally::ledger` | x |\n")

    def run_check(self, files):
        folders = read_table(self.TABLE)
        return check(files, folders, lambda p: p in files)

    def test_a_source_including_the_ledger_is_a_violation(self):
        problems = self.run_check({
            "shm/segments/a.cpp": '#include "agent/ledger/ledger.hpp"\n#include "agent/base/result.hpp"\n',
            "agent/ledger/ledger.hpp": "", "agent/base/result.hpp": "// x\n"})
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("shm/segments/a.cpp: includes agent/ledger/ledger.hpp", problems[0])

    def test_linking_upwards_is_a_violation(self):
        problems = self.run_check({
            "shm/segments/CMakeLists.txt": "target_link_libraries(x PUBLIC tally::base tally::ledger)",
            "shm/segments/a.cpp": "", "agent/ledger/l.cpp": "", "agent/base/b.cpp": ""})
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("links tally::ledger", problems[0])

    def test_an_unlisted_folder_is_a_violation(self):
        problems = self.run_check({"agent/newthing/x.cpp": "", "shm/segments/a.cpp": "", "agent/ledger/l.cpp": "",
                                   "agent/base/b.cpp": ""})
        self.assertEqual(problems, ["agent/newthing/x.cpp: its folder is not in docs/architecture.md"])

    def test_downwards_and_sideways_are_fine(self):
        problems = self.run_check({
            "agent/ledger/l.cpp": '#include "shm/segments/s.hpp"\n#include "agent/base/b.hpp"\n',
            "shm/segments/s.hpp": '#include "shm/segments/t.hpp"\n', "shm/segments/t.hpp": "",
            "agent/base/b.hpp": ""})
        self.assertEqual(problems, [])


def tracked_files(source_dir):
    files = {}
    for root in CODE_ROOTS:
        for directory, _, names in os.walk(os.path.join(source_dir, root)):
            for name in names:
                if name.endswith(CODE_SUFFIXES) or name == "CMakeLists.txt":
                    path = os.path.join(directory, name)
                    with open(path, encoding="utf-8", errors="replace") as f:
                        files[os.path.relpath(path, source_dir)] = f.read()
    return files


def main():
    source_dir = sys.argv[1]
    self_test = unittest.main(argv=[sys.argv[0]], exit=False, verbosity=1)
    if not self_test.result.wasSuccessful():
        return 1
    with open(os.path.join(source_dir, "docs", "architecture.md"), encoding="utf-8") as f:
        folders = read_table(f.read())
    if len(folders) < 10:
        print(f"docs/architecture.md: expected the folder table, found {len(folders)} rows")
        return 1
    problems = check(tracked_files(source_dir), folders, lambda p: os.path.exists(os.path.join(source_dir, p)))
    for problem in problems:
        print(problem)
    print(f"layering: {len(folders)} folders checked, {len(problems)} violations")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
