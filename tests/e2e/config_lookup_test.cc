// Which config file the daemon reads is explicit (--config, $SPRITEDIFF_CONFIG, the installed
// /etc/spritediff/config.json, else the built-in defaults), so it starts the same from any
// working directory; the start-up line names the file; a named file that is missing or wrong stops
// it with the reason; `config --defaults` round-trips through the binary.
#include <gtest/gtest.h>

#include <cstdio>
#include <regex>
#include <string>

#include "common/config.h"
#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

std::string Quote(const std::string& s) { return "'" + s + "'"; }

class ConfigLookupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("spritediff_config_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(FreePort()));
    fs::create_directories(root_ / "models");
    fs::create_directories(root_ / "data");
    fs::create_directories(root_ / "elsewhere");
    WriteTinyModel(root_ / "models", "tiny");
  }
  void TearDown() override { fs::remove_all(root_); }

  // Starts `spritediffd serve` from cwd with env (e.g. "SPRITEDIFF_CONFIG=..."; $SPRITEDIFF_CONFIG
  // is unset otherwise), waits for its start-up line, stops it with SIGTERM and returns that line
  // with the time stamp and the port taken out (empty when it did not start; out gets the log).
  std::string StartUpLine(const fs::path& cwd, const std::string& env, const std::string& extra_args,
                          Output* out = nullptr) {
    const fs::path log = root_ / "serve.log";
    const std::string serve =
        "env -u SPRITEDIFF_CONFIG " + env + " " + Quote(std::string(SPRITEDIFF_BIN_DIR) + "/spritediffd") + " " +
        extra_args + " --threads 1 --device cpu serve --port 0 --metrics-port 0 --models-dir " +
        Quote((root_ / "models").string()) + " --default-model tiny --data-root " + Quote((root_ / "data").string()) +
        " --state-dir " + Quote((root_ / "state").string());
    const std::string script = "cd " + Quote(cwd.string()) + " && { " + serve + " > " + Quote(log.string()) +
                               " 2>&1 & p=$!; for i in $(seq 600); do grep -q 'listening on' " +
                               Quote(log.string()) + " && break; kill -0 $p 2>/dev/null || break; sleep 0.1; done; " +
                               "kill -TERM $p 2>/dev/null; wait $p; }";
    Output run = RunShell(script);
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (out != nullptr) *out = Output{run.exit_code, text};
    const size_t at = text.find("spritediffd listening on ");
    if (at == std::string::npos) return "";
    const std::string line = text.substr(at, text.find('\n', at) - at);
    return std::regex_replace(line, std::regex(":[0-9]+ \\("), ":PORT (");
  }

  fs::path root_;
};

// The issue's case: started from a directory other than the checkout, the daemon used to run in
// fp32 without the shipped limits (configs/default.json was looked up relative to the working
// directory and a missing one ignored). Now both start with the same line, built-in defaults.
TEST_F(ConfigLookupTest, ServeStartsTheSameFromAnyWorkingDirectory) {
  const std::string from_checkout = StartUpLine(SPRITEDIFF_SOURCE_DIR, "", "");
  const std::string from_elsewhere = StartUpLine(root_ / "elsewhere", "", "");
  ASSERT_FALSE(from_checkout.empty());
  EXPECT_EQ(from_checkout, from_elsewhere);
  if (!fs::exists(kInstalledConfigPath)) {
    EXPECT_NE(from_elsewhere.find("config built-in defaults"), std::string::npos) << from_elsewhere;
  }
}

TEST_F(ConfigLookupTest, TheStartUpLineNamesTheFileAndTheFlagBeatsTheEnvironment) {
  const fs::path env_file = root_ / "env.json";
  std::ofstream(env_file) << "// from the environment\n{\"max_queued_rows\": 512}\n";
  const fs::path flag_file = root_ / "flag.json";
  std::ofstream(flag_file) << "{}";
  const std::string from_env = StartUpLine(root_ / "elsewhere", "SPRITEDIFF_CONFIG=" + Quote(env_file.string()), "");
  EXPECT_NE(from_env.find("config " + env_file.string() + " ($SPRITEDIFF_CONFIG)"), std::string::npos) << from_env;
  const std::string from_flag = StartUpLine(root_ / "elsewhere", "SPRITEDIFF_CONFIG=" + Quote(env_file.string()),
                                            "--config " + Quote(flag_file.string()));
  EXPECT_NE(from_flag.find("config " + flag_file.string() + " (--config)"), std::string::npos) << from_flag;
}

TEST_F(ConfigLookupTest, ANamedFileThatIsMissingOrWrongStopsTheDaemonNamingIt) {
  Output out;
  const std::string missing = (root_ / "missing.json").string();
  EXPECT_EQ(StartUpLine(root_ / "elsewhere", "SPRITEDIFF_CONFIG=" + Quote(missing), "", &out), "");
  EXPECT_NE(out.text.find(missing), std::string::npos) << out.text;
  EXPECT_NE(out.text.find("$SPRITEDIFF_CONFIG"), std::string::npos) << out.text;
  const std::pair<const char*, const char*> bad[] = {
      {R"({"max_batch_rows": "64"})", "max_batch_rows must be a whole number in [1, 4096]"},
      {R"({"max_batch_row": 64})", "unknown key 'max_batch_row'"},
      {R"({"precision": "fp16"})", "precision must be fp32, bf16 or auto, got 'fp16'"},
  };
  for (const auto& [body, message] : bad) {
    const fs::path file = root_ / "bad.json";
    std::ofstream(file) << body;
    EXPECT_EQ(StartUpLine(root_ / "elsewhere", "", "--config " + Quote(file.string()), &out), "") << body;
    EXPECT_NE(out.text.find(message), std::string::npos) << body << " -> " << out.text;
  }
}

// What `config --defaults` prints is a config file that gives back exactly the defaults.
TEST_F(ConfigLookupTest, PrintedDefaultsRoundTripThroughTheBinary) {
  const fs::path file = root_ / "defaults.json";
  Output printed = RunBin("spritediffd", "config --defaults > " + Quote(file.string()));
  ASSERT_EQ(printed.exit_code, 0) << printed.text;
  Output from_file = RunShell("env -u SPRITEDIFF_CONFIG " + std::string(SPRITEDIFF_BIN_DIR) + "/spritediffd --config " +
                              Quote(file.string()) + " config");
  Output built_in = RunShell("cd " + Quote((root_ / "elsewhere").string()) + " && env -u SPRITEDIFF_CONFIG " +
                             std::string(SPRITEDIFF_BIN_DIR) + "/spritediffd config");
  ASSERT_EQ(from_file.exit_code, 0) << from_file.text;
  ASSERT_EQ(built_in.exit_code, 0) << built_in.text;
  auto body = [](const std::string& text) { return text.substr(text.find('{')); };  // past the comment naming the file
  EXPECT_EQ(body(from_file.text), body(built_in.text));
  EXPECT_NE(from_file.text.find(file.filename().string()), std::string::npos) << from_file.text;
  EXPECT_NE(from_file.text.find("(--config)"), std::string::npos) << from_file.text;
}

}  // namespace
}  // namespace spritediff::e2e
