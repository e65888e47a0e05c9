// [quota] and [[budgets]], in tally.toml and budgets.d: the issue's example parses with its names, limits are in
// the resource's unit, drop-ins add budgets in name order with names unique across files, and every bad budget is
// an error naming the file, the line and the key.
#include <gtest/gtest.h>

#include "agent/config/config.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::agent {
namespace {

using budgets::Action;

std::string parse_error(std::string_view text) {
  auto result = parse_config(text, "test.toml");
  EXPECT_FALSE(result.has_value()) << "expected an error for:\n" << text;
  return result.has_value() ? std::string() : result.error().message;
}

TEST(BudgetsConfig, TheIssuesExampleParses) {
  auto config = parse_config(R"([quota]
time_zone = "Europe/Berlin"

[[budgets]]
name = "team-a-daily-tokens"
select = { team = "a" }          # every label named must match (others are free); or workload = "..."
resource = "tokens_out"
window = "day"
soft = 800000
hard = 1000000
action = "deny"

[[budgets]]
name = "trainer-gpu"
select = { workload = "slurm:job:42", project = "p" }
resource = "gpu_seconds"
window = "rolling:15m"
hard = 1.5
action = "degrade"
degrade_max_tokens = 256
allowance = 100
)",
                             "tally.toml");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->quota.time_zone, "Europe/Berlin");
  ASSERT_EQ(config->quota.budgets.size(), 2u);
  const auto& a = config->quota.budgets[0];
  EXPECT_EQ(a.name, "team-a-daily-tokens");
  EXPECT_EQ(a.select.labels, (std::vector<std::pair<std::string, std::string>>{{"team", "a"}}));
  EXPECT_TRUE(a.select.workload.empty());
  EXPECT_EQ(a.resource.name, "tokens_out");
  EXPECT_EQ(a.resource.client_counter, 1u);
  EXPECT_EQ(a.window.kind, budgets::WindowKind::day);
  EXPECT_EQ(a.soft, 800000u);
  EXPECT_EQ(a.hard, 1000000u);
  EXPECT_EQ(a.action, Action::deny);
  EXPECT_EQ(a.granule(), 1000u) << "a thousandth of the hard limit by default";
  EXPECT_EQ(a.origin, "tally.toml:4");
  const auto& g = config->quota.budgets[1];
  EXPECT_EQ(g.select.workload, "slurm:job:42");
  EXPECT_EQ(g.hard, 1'500'000'000u) << "gpu_seconds are counted in nanoseconds";
  EXPECT_EQ(g.window.length, std::chrono::minutes(15));
  EXPECT_EQ(g.degrade_max_tokens, 256u);
  EXPECT_EQ(g.granule(), 100u);
  EXPECT_TRUE(Config{}.quota.budgets.empty());
  EXPECT_EQ(Config{}.quota.time_zone, "UTC");
}

TEST(BudgetsConfig, BadBudgetsNameTheFileLineAndKey) {
  const std::string head = "[[budgets]]\nname = \"b\"\nselect = { team = \"a\" }\nresource = \"tokens\"\n";
  const struct {
    std::string text;
    const char* expected;
  } cases[] = {
      {"[[budgets]]\nselect = {}\n", "test.toml:1:1: budgets.name: is required"},
      {"[[budgets]]\nname = \"a b\"\n", "test.toml:2:8: budgets.name: 'a b': expected 1 to 64 of [A-Za-z0-9_.-]"},
      {"[[budgets]]\nname = \"b\"\nresource = \"tokens\"\n", "budgets.select: is required"},
      {"[[budgets]]\nname = \"b\"\nselect = \"team=a\"\n", "test.toml:3:10: budgets.select: expected a table"},
      {"[[budgets]]\nname = \"b\"\nselect = { team = 1 }\n", "budgets.select.team: expected a string"},
      {"[[budgets]]\nname = \"b\"\nselect = {}\nresource = \"watts\"\nhard = 1\naction = \"deny\"\n",
       "test.toml:4:12: budgets.resource: 'watts' is not a resource"},
      {head + "window = \"week\"\nhard = 1\naction = \"deny\"\n", "test.toml:5:10: budgets.window: 'week' is not a window"},
      {head, "test.toml:1:1: budgets: sets neither soft nor hard"},
      {head + "hard = -1\naction = \"deny\"\n", "test.toml:5:8: budgets.hard: -1 is out of range"},
      {head + "hard = 1.5\naction = \"deny\"\n", "test.toml:5:8: budgets.hard: expected an integer"},
      {head + "soft = 10\nhard = 5\naction = \"deny\"\n", "budgets.soft: is above hard"},
      {head + "hard = 5\n", "budgets.action: is required with a hard limit"},
      {head + "soft = 5\naction = \"deny\"\n", "budgets.action: needs a hard limit"},
      {head + "hard = 5\naction = \"kill\"\n", "test.toml:6:10: budgets.action: 'kill' is not an action"},
      {head + "hard = 5\naction = \"deny\"\ndegrade_max_tokens = 10\n", "budgets.degrade_max_tokens: only for action"},
      {head + "hard = 5\naction = \"degrade\"\ndegrade_max_tokens = 70000\n",
       "budgets.degrade_max_tokens: 70000 is out of range [1, 65535]"},
      {head + "hard = 5\naction = \"deny\"\nallowance = 10\n",
       "budgets.allowance: resource 'tokens' is not reserved by clients"},
      {head + "hard = 5\naction = \"deny\"\nwindows = \"day\"\n", "test.toml:7:1: budgets.windows: unknown key"},
      {"[quota]\ntime_zone = \"Mars/Olympus\"\n", "test.toml:2:13: quota.time_zone: 'Mars/Olympus' is not a time zone"},
      {"[quota]\ndrop_in_dir = \"relative\"\n", "quota.drop_in_dir: expected an absolute path"},
      {"[budgets]\nname = \"b\"\n", "budgets: expected [[budgets]] tables"},
  };
  for (const auto& c : cases) {
    const std::string error = parse_error(c.text);
    EXPECT_NE(error.find(c.expected), std::string::npos) << "got: " << error << "\nfor:\n" << c.text;
  }
  EXPECT_NE(parse_error(head + "hard = 5\naction = \"deny\"\n[[budgets]]\nname = \"b\"\nselect = {}\n"
                                  "resource = \"requests\"\nhard = 1\naction = \"deny\"\n")
                .find("test.toml:8:8: budgets.name: 'b' is already a budget (test.toml:1)"),
            std::string::npos);
}

TEST(BudgetsConfig, DropInsAddBudgetsInNameOrderWithNamesUniqueAcrossFiles) {
  test::TempDir dir;
  dir.write("tally.toml", "[[budgets]]\nname = \"main\"\nselect = {}\nresource = \"requests\"\nsoft = 10\n");
  dir.write("budgets.d/20-b.toml", "[[budgets]]\nname = \"b\"\nselect = { team = \"b\" }\nresource = \"tokens\"\n"
                                   "hard = 5\naction = \"throttle\"\n");
  dir.write("budgets.d/10-a.toml", "[[budgets]]\nname = \"a\"\nselect = { team = \"a\" }\nresource = \"io_bytes\"\n"
                                   "hard = 5\naction = \"notify\"\n");
  dir.write("budgets.d/notes.txt", "not a budget");
  auto config = load_config(dir / "tally.toml", true);
  ASSERT_TRUE(config) << config.error().message;
  ASSERT_EQ(config->quota.budgets.size(), 3u);
  EXPECT_EQ(config->quota.budgets[0].name, "main");
  EXPECT_EQ(config->quota.budgets[1].name, "a");
  EXPECT_EQ(config->quota.budgets[1].origin, (dir / "budgets.d/10-a.toml").string() + ":1");
  EXPECT_EQ(config->quota.budgets[2].name, "b");

  dir.write("budgets.d/30-dup.toml", "[[budgets]]\nname = \"a\"\nselect = {}\nresource = \"tokens\"\nsoft = 1\n");
  auto dup = load_config(dir / "tally.toml", true);
  ASSERT_FALSE(dup);
  EXPECT_NE(dup.error().message.find("30-dup.toml:2:8: budgets.name: 'a' is already a budget"), std::string::npos)
      << dup.error().message;
  std::filesystem::remove(dir / "budgets.d/30-dup.toml");
  // A drop-in holds budgets only: how budgets behave is the main file's to say.
  dir.write("budgets.d/40-quota.toml", "[quota]\ntime_zone = \"UTC\"\n");
  auto quota = load_config(dir / "tally.toml", true);
  ASSERT_FALSE(quota);
  EXPECT_NE(quota.error().message.find("40-quota.toml:1:2: quota: unknown key"), std::string::npos)
      << quota.error().message;
  EXPECT_EQ(budgets_drop_in_dir(Config{}.quota, "/etc/tally/tally.toml"), "/etc/tally/budgets.d");
}

TEST(BudgetsConfig, PrioritiesForPreemptByWorkload) {
  auto config = parse_config(R"([quota]
priorities = { "systemd:inference.service" = 100, "slurm:job:42" = -5 }

[[budgets]]
name = "batch-gpu"
select = { workload = "slurm:job:42" }
resource = "gpu_seconds"
window = "day"
hard = 3600
action = "preempt"
)", "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->quota.priorities,
            (std::map<std::string, std::int64_t>{{"slurm:job:42", -5}, {"systemd:inference.service", 100}}));
  EXPECT_EQ(config->quota.budgets.at(0).action, Action::preempt);
  EXPECT_NE(parse_error("[quota]\npriorities = { \"systemd:a.service\" = \"high\" }\n")
                .find("test.toml:2:38: quota.priorities.\"systemd:a.service\": expected an integer priority"),
            std::string::npos)
      << parse_error("[quota]\npriorities = { \"systemd:a.service\" = \"high\" }\n");
  EXPECT_NE(parse_error("[quota]\npriorities = { \"team-a\" = 1 }\n").find("is not a workload"), std::string::npos);
  EXPECT_NE(parse_error("[quota]\npriorities = 3\n").find("quota.priorities: expected a table"), std::string::npos);
}

}  // namespace
}  // namespace tally::agent
