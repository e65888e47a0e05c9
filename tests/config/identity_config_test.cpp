// The [identity] section of tallyd's configuration: where each workload manager puts its cgroups. Defaults, values
// that move a manager, and errors that name the file, line and key.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/config/config.hpp"

namespace tally::agent {
namespace {

std::string error_of(const std::string& text) {
  auto config = parse_config(text, "test.toml");
  EXPECT_FALSE(config) << "expected an error for:\n" << text;
  return config ? std::string() : config.error().message;
}

TEST(IdentityConfig, DefaultsAreTheManagersOwnPlaces) {
  const IdentityRules rules = Config{}.identity;
  EXPECT_EQ(rules.kubepods_roots, (std::vector<std::string>{"/kubepods.slice", "/kubepods"}));
  EXPECT_EQ(rules.slurm_roots, (std::vector<std::string>{"/system.slice/slurmstepd.scope", "/slurm"}));
  EXPECT_EQ(rules.container_parents, (std::vector<std::string>{"/system.slice", "/machine.slice", "/docker"}));
  EXPECT_EQ(rules.systemd_root, "/");
  EXPECT_EQ(rules.user_root, "/user.slice");
}

TEST(IdentityConfig, ValuesMoveTheManagers) {
  auto config = parse_config(
      "[identity]\nkubepods_roots = [\"/site/k8s\"]\nslurm_roots = []\n"
      "container_parents = [\"/containers\", \"/system.slice\"]\nsystemd_root = \"/host\"\n"
      "user_root = \"/host/user.slice\"\n",
      "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  const IdentityRules& rules = config->identity;
  EXPECT_EQ(rules.kubepods_roots, std::vector<std::string>{"/site/k8s"});
  EXPECT_TRUE(rules.slurm_roots.empty());
  EXPECT_EQ(rules.container_parents, (std::vector<std::string>{"/containers", "/system.slice"}));
  EXPECT_EQ(rules.systemd_root, "/host");
  EXPECT_EQ(rules.user_root, "/host/user.slice");
  // What the agent identifies follows: a pod at the moved root, none at the default one, no Slurm job at all.
  EXPECT_EQ(identify_cgroup("/site/k8s/pod1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718", rules).kind,
            WorkloadKind::kubernetes_pod);
  EXPECT_EQ(identify_cgroup("/kubepods/pod1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718", rules).kind, WorkloadKind::cgroup);
  EXPECT_EQ(identify_cgroup("/system.slice/slurmstepd.scope/job_1", rules).kind, WorkloadKind::cgroup);
}

TEST(IdentityConfig, BadValuesNameFileLineAndKey) {
  struct Case {
    std::string text;
    std::string starts;  // file:line
    std::string says;
  };
  const std::vector<Case> cases = {
      {"[identity]\nkubepods = [\"/k\"]\n", "test.toml:2:", "identity.kubepods: unknown key"},
      {"[identity]\nkubepods_roots = \"/kubepods\"\n", "test.toml:2:",
       "identity.kubepods_roots: expected an array of cgroup paths"},
      {"[identity]\nslurm_roots = [\"/slurm\", 7]\n", "test.toml:2:", "identity.slurm_roots[1]: expected a string"},
      {"[identity]\n\ncontainer_parents = [\"docker\"]\n", "test.toml:3:",
       "identity.container_parents[0]: 'docker' is not an absolute path"},
      {"[identity]\nkubepods_roots = [\"/kubepods/\"]\n", "test.toml:2:", "identity.kubepods_roots[0]: '/kubepods/'"},
      {"[identity]\nuser_root = \"/user.slice/../x\"\n", "test.toml:2:", "identity.user_root: '/user.slice/../x'"},
      {"[identity]\nsystemd_root = 1\n", "test.toml:2:", "identity.systemd_root: expected a string"},
      {"identity = 1\n", "test.toml:1:", "identity: expected a table"},
  };
  for (const Case& c : cases) {
    const std::string message = error_of(c.text);
    EXPECT_EQ(message.rfind(c.starts, 0), 0u) << message;
    EXPECT_NE(message.find(c.says), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace tally::agent
