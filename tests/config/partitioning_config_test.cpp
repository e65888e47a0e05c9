// [partitioning] and the plan drop-ins: the names the issue's example uses keep working, drop-ins add GPUs and
// assignments in name order, and every bad entry is an error naming the file, the line and the key.
#include <gtest/gtest.h>

#include "agent/config/config.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::agent {
namespace {

using partitioning::Assignment;
using partitioning::DefaultAccess;
using partitioning::OnStop;

std::string parse_error(std::string_view text) {
  auto result = parse_config(text, "test.toml");
  EXPECT_FALSE(result.has_value()) << "expected an error for:\n" << text;
  return result.has_value() ? std::string() : result.error().message;
}

TEST(PartitioningConfig, TheDocumentedExampleParses) {
  auto config = parse_config(R"([partitioning]
default = "deny"
on_stop = "release"
[[partitioning.gpu]]
select = "0"
mode = "mig"
profiles = ["3g.40gb", "3g.40gb"]
[[partitioning.gpu]]
select = "GPU-8c2a"
mode = "whole"
[[partitioning.assign]]
workload = "systemd:inference.service"
gpus = ["0/mig/1", "00000000:3B:00.0"]
)",
                             "tally.toml");
  ASSERT_TRUE(config) << config.error().message;
  const auto& plan = config->partitioning;
  EXPECT_EQ(plan.default_access, DefaultAccess::deny);
  EXPECT_EQ(plan.on_stop, OnStop::release);
  ASSERT_EQ(plan.gpus.size(), 2u);
  EXPECT_TRUE(plan.gpus[0].mig);
  EXPECT_EQ(plan.gpus[0].profiles, (std::vector<std::string>{"3g.40gb", "3g.40gb"}));
  EXPECT_EQ(plan.gpus[0].origin, "tally.toml:4");
  EXPECT_FALSE(plan.gpus[1].mig);
  ASSERT_EQ(plan.assignments.size(), 1u);
  EXPECT_EQ(plan.assignments[0].workload, "systemd:inference.service");
  EXPECT_EQ(plan.assignments[0].gpus, (std::vector<std::string>{"0/mig/1", "00000000:3B:00.0"}));
  EXPECT_TRUE(plan.restricts());
  EXPECT_FALSE(Config{}.partitioning.restricts()) << "the default plan restricts nothing";
}

TEST(PartitioningConfig, BadEntriesNameTheKeyAndLine) {
  const struct {
    const char* text;
    const char* expected;
  } cases[] = {
      {"[partitioning]\ndefault = \"closed\"\n", "test.toml:2:11: partitioning.default: 'closed' is not \"open\" or \"deny\""},
      {"[partitioning]\non_stop = \"detach\"\n", "partitioning.on_stop: 'detach' is not \"keep\" or \"release\""},
      {"[partitioning]\npin_dir = \"relative\"\n", "partitioning.pin_dir: expected an absolute path"},
      {"[partitioning]\nsurprise = 1\n", "partitioning.surprise"},
      {"[[partitioning.gpu]]\nselect = \"0\"\nmode = \"half\"\n", "'half' is not \"whole\" or \"mig\""},
      {"[[partitioning.gpu]]\nselect = \"0\"\nmode = \"mig\"\n", "mode \"mig\" needs profiles"},
      {"[[partitioning.gpu]]\nselect = \"0\"\nprofiles = [\"3g.40gb\"]\n", "profiles need mode \"mig\""},
      {"[[partitioning.gpu]]\nselect = \"0\"\nmode = \"mig\"\nprofiles = [\"big\"]\n",
       "partitioning.gpu.profiles[0]: 'big' is not a MIG profile name"},
      {"[[partitioning.gpu]]\nselect = \"0/mig/1\"\n", "expected a GPU index, UUID or PCI bus id"},
      {"[[partitioning.gpu]]\nselect = \"0\"\n[[partitioning.gpu]]\nselect = \"0\"\n",
       "GPU '0' already has a geometry (test.toml:1)"},
      {"[[partitioning.assign]]\nworkload = \"inference\"\ngpus = [\"0\"]\n", "test.toml:1:1: partitioning.assign.workload"},
      {"[[partitioning.assign]]\nworkload = \"cgroup:relative\"\ngpus = [\"0\"]\n", "partitioning.assign.workload"},
      {"[[partitioning.assign]]\nworkload = \"systemd:a.service\"\ngpus = []\n", "partitioning.assign.gpus: names no GPU"},
      {"[[partitioning.assign]]\nworkload = \"systemd:a.service\"\ngpus = [\"0/mig/x\"]\n",
       "partitioning.assign.gpus[0]"},
      {"[partitioning]\nsystem_clients = [\"dcgm\"]\n", "partitioning.system_clients[0]"},
  };
  for (const auto& c : cases) {
    const std::string message = parse_error(c.text);
    EXPECT_NE(message.find(c.expected), std::string::npos) << "input:\n" << c.text << "message: " << message;
  }
}

TEST(PartitioningConfig, DropInsAddGpusAndAssignmentsInNameOrder) {
  test::TempDir dir;
  dir.write("tally.toml", "[partitioning]\ndefault = \"deny\"\n[[partitioning.assign]]\n"
                          "workload = \"systemd:a.service\"\ngpus = [\"0\"]\n");
  std::filesystem::create_directory(dir / "plan.d");
  dir.write("plan.d/20-job.toml", "[[partitioning.assign]]\nworkload = \"slurm:job:42\"\ngpus = [\"2\"]\n");
  dir.write("plan.d/10-pod.toml", "[[partitioning.assign]]\nworkload = \"k8s:pod:0d5e\"\ngpus = [\"1\"]\n");
  dir.write("plan.d/ignored.txt", "not a plan");
  auto config = load_config(dir / "tally.toml", true);
  ASSERT_TRUE(config) << config.error().message;
  const auto& assignments = config->partitioning.assignments;
  ASSERT_EQ(assignments.size(), 3u);
  EXPECT_EQ(assignments[0].workload, "systemd:a.service");
  EXPECT_EQ(assignments[1].workload, "k8s:pod:0d5e");
  EXPECT_EQ(assignments[1].origin, (dir / "plan.d/10-pod.toml").string() + ":1");
  EXPECT_EQ(assignments[2].workload, "slurm:job:42");
  EXPECT_EQ(config->partitioning.default_access, DefaultAccess::deny);

  // A drop-in says what, never how: the plan's behaviour is the main file's.
  dir.write("plan.d/30-bad.toml", "[partitioning]\ndefault = \"open\"\n");
  auto bad = load_config(dir / "tally.toml", true);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("30-bad.toml:2:1: partitioning.default"), std::string::npos)
      << bad.error().message;
}

TEST(PartitioningConfig, TheDropInDirectoryCanBeMoved) {
  test::TempDir dir;
  test::TempDir elsewhere;
  dir.write("tally.toml", "[partitioning]\ndrop_in_dir = \"" + elsewhere.path().string() + "\"\n");
  elsewhere.write("job.toml", "[[partitioning.assign]]\nworkload = \"cgroup:/jobs/7\"\ngpus = [\"0\"]\n");
  auto config = load_config(dir / "tally.toml", true);
  ASSERT_TRUE(config) << config.error().message;
  ASSERT_EQ(config->partitioning.assignments.size(), 1u);
  EXPECT_EQ(plan_drop_in_dir(config->partitioning, dir / "tally.toml"), elsewhere.path());
  EXPECT_EQ(plan_drop_in_dir(Config{}.partitioning, "/etc/tally/tally.toml"), "/etc/tally/plan.d");
}

}  // namespace
}  // namespace tally::agent
