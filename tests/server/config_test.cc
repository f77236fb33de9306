// AppConfig validation: the bundled config is valid, and settings that could never work are
// refused with a message that names them.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <utility>
#include <variant>

#include "common/config.h"

namespace spritediff {
namespace {

TEST(Config, BundledDefaultConfigLoadsAndIsValid) {
  Result<AppConfig> config = LoadConfig(std::string(SPRITEDIFF_SOURCE_DIR) + "/configs/default.json");
  ASSERT_TRUE(config.ok()) << config.status().message();
  EXPECT_TRUE(config->Validate().ok()) << config->Validate().message();
}

TEST(Config, RefusesMoreRowsPerRequestThanABatchHolds) {
  AppConfig config;
  config.max_batch_rows = 16;
  config.max_rows_per_request = config.max_batch_rows + 1;
  Status s = config.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(s.message().find("max_rows_per_request (17)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("max_batch_rows (16)"), std::string::npos) << s.message();
  config.max_rows_per_request = config.max_batch_rows;
  EXPECT_TRUE(config.Validate().ok()) << config.Validate().message();
}

TEST(Config, RefusesOutOfRangeFieldsByName) {
  AppConfig config;
  config.max_batch_rows = 0;
  Status s = config.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("max_batch_rows"), std::string::npos) << s.message();
  config.max_batch_rows = 64;
  config.cpu_batch_rows = -1;
  s = config.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cpu_batch_rows must be in [0, 4096], got -1"), std::string::npos) << s.message();
  config.cpu_batch_rows = 32;
  config.cpu_overload_batch_rows = 4097;
  s = config.Validate();
  EXPECT_NE(s.message().find("cpu_overload_batch_rows must be in [0, 4096], got 4097"), std::string::npos) << s.message();
  config.cpu_overload_batch_rows = 24;
  config.cpu_batch_wait_steps = -1;
  s = config.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cpu_batch_wait_steps must be in [0, 100000], got -1"), std::string::npos) << s.message();
}

TEST(Config, MaxQueueWaitMustBeAFiniteNonNegativeNumberOfSeconds) {
  for (double bad : {-1.0, std::nan(""), 1e9}) {
    AppConfig config;
    config.max_queue_wait_s = bad;
    Status s = config.Validate();
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find("max_queue_wait_s"), std::string::npos) << s.message();
  }
  AppConfig off;
  off.max_queue_wait_s = 0;  // off
  EXPECT_TRUE(off.Validate().ok());
}

// The compiled-in defaults are the values we ship (docs/serving.md says why each of these).
TEST(Config, BuiltInDefaultsAreTheShippedValues) {
  const AppConfig shipped;
  EXPECT_TRUE(shipped.Validate().ok()) << shipped.Validate().message();
  EXPECT_GT(shipped.max_queue_wait_s, 0.0);
  EXPECT_TRUE(shipped.cuda_graphs);
  EXPECT_EQ(shipped.max_batch_rows, 64);
  EXPECT_EQ(shipped.cpu_batch_rows, 32);
  EXPECT_EQ(shipped.cpu_batch_wait_steps, 4);  // joins behind big requests at the next step
  EXPECT_EQ(shipped.cpu_overload_batch_rows, 12);  // past capacity: faster steps for accepted requests
  EXPECT_EQ(shipped.fold_batchnorm, "auto");  // folded on a GPU only
  EXPECT_EQ(shipped.precision, "auto");
  EXPECT_EQ(shipped.training_precision, "auto");
  EXPECT_EQ(shipped.metrics_port, 9464);
  EXPECT_EQ(shipped.bind, "127.0.0.1");
  EXPECT_EQ(shipped.loaded_from, "built-in defaults");
}

// The shipped files carry only what their deployment changes, and may carry comments.
TEST(Config, ShippedFilesLoadAndChangeOnlyWhatTheyName) {
  Result<AppConfig> checkout = LoadConfig(std::string(SPRITEDIFF_SOURCE_DIR) + "/configs/default.json");
  ASSERT_TRUE(checkout.ok()) << checkout.status().message();
  EXPECT_EQ(CommentedConfigText(*checkout, "x"), CommentedConfigText(AppConfig(), "x"));
  Result<AppConfig> container = LoadConfig(std::string(SPRITEDIFF_SOURCE_DIR) + "/docker/container.json");
  ASSERT_TRUE(container.ok()) << container.status().message();
  EXPECT_EQ(container->bind, "0.0.0.0");
  EXPECT_EQ(container->port, AppConfig().port);
  Result<AppConfig> debian = LoadConfig(std::string(SPRITEDIFF_SOURCE_DIR) + "/configs/debian.json");
  ASSERT_TRUE(debian.ok()) << debian.status().message();
  EXPECT_EQ(debian->models_dir, "/var/lib/spritediff/models");
  EXPECT_EQ(debian->bind, "127.0.0.1");  // the package serves on loopback
}

TEST(Config, PrecisionAndReleaseMemoryAreCheckedByName) {
  AppConfig config;
  EXPECT_EQ(config.precision, "auto");
  EXPECT_EQ(config.release_memory_s, 1);
  config.precision = "fp16";
  Status s = config.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("precision"), std::string::npos) << s.message();
  for (const char* ok : {"fp32", "bf16", "auto"}) {
    config.precision = ok;
    EXPECT_TRUE(config.Validate().ok()) << ok;
  }
  EXPECT_EQ(config.training_precision, "auto");
  config.training_precision = "fp16";
  s = config.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("training_precision"), std::string::npos) << s.message();
  config.training_precision = "bf16";
  EXPECT_TRUE(config.Validate().ok());
  config.release_memory_s = -1;
  s = config.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("release_memory_s"), std::string::npos) << s.message();
  config.release_memory_s = 1;
  config.release_idle_s = 86401;
  s = config.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("release_idle_s"), std::string::npos) << s.message();
}

// A config value of the wrong JSON type, or one that does not fit the field's type, is refused
// with the key's name: never converted silently (1e12 into an int, 2.5 into 2) and never
// reported by nlohmann's "type must be number", which names no key.
TEST(Config, ValuesOfTheWrongTypeAreRefusedByName) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("spritediff-config-" + std::to_string(::getpid()) + ".json")).string();
  auto load = [&](const std::string& body) {
    std::ofstream(path) << body;
    return LoadConfig(path);
  };
  const std::pair<const char*, const char*> bad[] = {
      {R"({"port": "50051"})", "port must be a whole number"},
      {R"({"port": 1e12})", "port must be a whole number in [0, 65535], got 1000000000000.0"},
      {R"({"port": -1})", "port must be a whole number in [0, 65535], got -1"},
      {R"({"max_epochs_x_images": 0})", "max_epochs_x_images must be a whole number in [1, 1000000000000], got 0"},
      {R"({"precision": "fp16"})", "precision must be fp32, bf16 or auto, got 'fp16'"},
      {R"({"bind": ""})", "bind must not be empty"},
      {R"({"max_queue_wait_s": -0.5})", "max_queue_wait_s must be in [0, 86400] s, got -0.5"},
      {R"({"prot": 1})", "unknown key 'prot'"},
      {R"({"comment": 1})", "comment must be a string"},
      {R"([1, 2])", "config must be a JSON object"},
      {R"({"port": 1,})", "not JSON"},
      {R"({"threads": 2.5})", "threads must be a whole number"},
      {R"({"max_batch_rows": 99999999999999999999})", "max_batch_rows must be a whole number"},
      {R"({"max_epochs_x_images": 1e30})", "max_epochs_x_images must be a whole number"},
      {R"({"fold_batchnorm": 1})", "fold_batchnorm must be true, false or \"auto\", got 1"},
      {R"({"fold_batchnorm": "yes"})", "fold_batchnorm must be true, false or \"auto\", got \"yes\""},
      {R"({"cuda_graphs": "yes"})", "cuda_graphs must be true or false"},
      {R"({"max_queue_wait_s": "5"})", "max_queue_wait_s must be a number"},
      {R"({"bind": 127})", "bind must be a string, got 127"},
      {R"({"precision": null})", "precision must be a string"},
      {R"({"auth_token_file": ["a", "b"]})", "auth_token_file must be a string"},
  };
  for (const auto& [body, message] : bad) {
    Result<AppConfig> c = load(body);
    ASSERT_FALSE(c.ok()) << body;
    EXPECT_EQ(c.status().code(), Status::Code::kInvalidArgument) << body;
    EXPECT_NE(c.status().message().find(message), std::string::npos) << body << " -> " << c.status().message();
    EXPECT_NE(c.status().message().find(path), std::string::npos) << c.status().message();
  }
  // Whole numbers written as floats are whole numbers; ranges are still Validate()'s.
  Result<AppConfig> whole = load(R"({"threads": 2.0, "max_epochs_x_images": 3e7, "max_queue_wait_s": 2})");
  ASSERT_TRUE(whole.ok()) << whole.status().message();
  EXPECT_EQ(whole->threads, 2);
  EXPECT_EQ(whole->max_epochs_x_images, 30000000);
  EXPECT_EQ(whole->max_queue_wait_s, 2.0);
  // fold_batchnorm takes a bool or "auto" (on a CUDA device only).
  for (const auto& [body, kept] : {std::pair{R"({"fold_batchnorm": true})", "true"},
                                   {R"({"fold_batchnorm": false})", "false"},
                                   {R"({"fold_batchnorm": "auto"})", "auto"}}) {
    Result<AppConfig> fold = load(body);
    ASSERT_TRUE(fold.ok()) << body << " -> " << fold.status().message();
    EXPECT_EQ(fold->fold_batchnorm, kept);
  }
  Result<AppConfig> range = load(R"({"port": 70000})");
  ASSERT_FALSE(range.ok());
  EXPECT_NE(range.status().message().find("port must be a whole number in [0, 65535], got 70000"), std::string::npos)
      << range.status().message();
  std::filesystem::remove(path);
  Result<AppConfig> device = LoadConfig("/dev/zero");
  EXPECT_EQ(device.status().code(), Status::Code::kInvalidArgument);
}

// The key table: one row a key, every default valid by its own rule, every row documented.
TEST(Config, TheKeyTableIsWellFormed) {
  std::set<std::string> names;
  for (const ConfigKey& key : ConfigKeys()) {
    EXPECT_TRUE(names.insert(key.name).second) << "two rows for " << key.name;
    EXPECT_GT(std::string(key.doc).size(), 10u) << key.name;
    EXPECT_FALSE(std::string(key.section).empty()) << key.name;
    EXPECT_FALSE(ConfigKeyRule(key).empty()) << key.name;
  }
  EXPECT_GE(names.size(), 40u);
  EXPECT_TRUE(AppConfig().Validate().ok()) << AppConfig().Validate().message();
  // Two rows naming one field would leave another field without a default.
  const std::vector<ConfigKey>& keys = ConfigKeys();
  for (size_t i = 0; i < keys.size(); ++i) {
    for (size_t j = i + 1; j < keys.size(); ++j) {
      EXPECT_FALSE(keys[i].field == keys[j].field) << keys[i].name << " and " << keys[j].name;
    }
  }
}

// `config --defaults` round-trips: its text (comments and all) parses back to the defaults.
TEST(Config, CommentedDefaultsParseBackToTheDefaults) {
  const std::string text = DefaultConfigText();
  EXPECT_NE(text.find("// "), std::string::npos);
  Result<AppConfig> parsed = ParseConfig(text, "defaults");
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  const AppConfig defaults;
  for (const ConfigKey& key : ConfigKeys()) {
    EXPECT_EQ(ConfigValueJson(key, *parsed), ConfigValueJson(key, defaults)) << key.name;
    EXPECT_EQ(ConfigValueJson(key, defaults), ConfigKeyDefaultJson(key)) << key.name;
    EXPECT_NE(text.find("\"" + std::string(key.name) + "\": " + ConfigKeyDefaultJson(key)), std::string::npos)
        << key.name;
  }
}

// A config that differs from the defaults round-trips too, and its text names each default it changes.
TEST(Config, CommentedConfigRoundTripsChangedValues) {
  AppConfig changed;
  changed.port = 6000;
  changed.max_queue_wait_s = 1.5;
  changed.fold_batchnorm = "false";
  changed.reflection = false;
  changed.max_epochs_x_images = 123456789012;
  changed.precision = "bf16";
  changed.tls_cert_file = "/x.crt";
  changed.tls_key_file = "/x.key";
  const std::string text = CommentedConfigText(changed, "changed");
  EXPECT_NE(text.find("\"fold_batchnorm\": false"), std::string::npos) << text;
  EXPECT_NE(text.find("// (default: 50051)\n  \"port\": 6000"), std::string::npos) << text;
  Result<AppConfig> parsed = ParseConfig(text, "changed");
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  for (const ConfigKey& key : ConfigKeys()) {
    EXPECT_EQ(ConfigValueJson(key, *parsed), ConfigValueJson(key, changed)) << key.name;
  }
}

TEST(Config, FilesMayCarryCommentsOfBothKinds) {
  Result<AppConfig> parsed = ParseConfig("// a line\n{ /* a block */ \"port\": 7000 // after\n}", "commented");
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  EXPECT_EQ(parsed->port, 7000);
}

// The lookup is explicit: --config, else $SPRITEDIFF_CONFIG, else the installed file, else none.
TEST(Config, LookupOrderIsFlagThenEnvironmentThenInstalledThenDefaults) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("spritediff-lookup-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string installed = (dir / "config.json").string();
  const std::string absent = (dir / "absent.json").string();
  ::unsetenv("SPRITEDIFF_CONFIG");
  ConfigFile found = FindConfigFile("", absent);
  EXPECT_EQ(found.path, "");
  std::ofstream(installed) << "{}";
  found = FindConfigFile("", installed);
  EXPECT_EQ(found.path, installed);
  EXPECT_EQ(found.why, "installed");
  ::setenv("SPRITEDIFF_CONFIG", "/env.json", 1);
  found = FindConfigFile("", installed);
  EXPECT_EQ(found.path, "/env.json");
  EXPECT_EQ(found.why, "$SPRITEDIFF_CONFIG");
  found = FindConfigFile("/flag.json", installed);
  EXPECT_EQ(found.path, "/flag.json");
  EXPECT_EQ(found.why, "--config");
  ::unsetenv("SPRITEDIFF_CONFIG");
  // A named file that is missing is an error, never skipped.
  Result<AppConfig> missing = LoadConfig(absent);
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(absent), std::string::npos) << missing.status().message();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace spritediff
