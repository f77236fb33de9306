// AppConfig validation: the bundled config is valid, and settings that could never work are
// refused with a message that names them.
#include <gtest/gtest.h>

#include <cmath>

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

TEST(Config, TheShippedConfigLoadsAndBoundsQueueWait) {
  Result<AppConfig> shipped = LoadConfig(std::string(SPRITEDIFF_SOURCE_DIR) + "/configs/default.json");
  ASSERT_TRUE(shipped.ok()) << shipped.status().message();
  EXPECT_GT(shipped->max_queue_wait_s, 0.0);
  EXPECT_TRUE(shipped->cuda_graphs);
  EXPECT_EQ(shipped->precision, "auto");
  EXPECT_EQ(shipped->training_precision, "auto");
}

TEST(Config, PrecisionAndReleaseMemoryAreCheckedByName) {
  AppConfig config;
  EXPECT_EQ(config.precision, "fp32");
  EXPECT_EQ(config.release_memory_s, 1);
  config.precision = "fp16";
  Status s = config.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("precision"), std::string::npos) << s.message();
  for (const char* ok : {"fp32", "bf16", "auto"}) {
    config.precision = ok;
    EXPECT_TRUE(config.Validate().ok()) << ok;
  }
  EXPECT_EQ(config.training_precision, "fp32");
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

}  // namespace
}  // namespace spritediff
