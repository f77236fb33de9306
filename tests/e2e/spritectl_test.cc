// End-to-end: spritectl against a daemon started by the test.
#include <gif_lib.h>

#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/image.h"
#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

class SpritectlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new Daemon();
    daemon_->Start(R"({"max_batch_rows": 32, "max_rows_per_request": 32})");
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(daemon_->Stop(), 0);
    delete daemon_;
  }
  std::string Server() { return " --server " + daemon_->address(); }
  static Daemon* daemon_;
};
Daemon* SpritectlTest::daemon_ = nullptr;

TEST_F(SpritectlTest, ModelsPrintsATable) {
  Output out = RunCtl("models" + Server());
  EXPECT_EQ(out.exit_code, 0) << out.text;
  EXPECT_NE(out.text.find("tiny"), std::string::npos);
  EXPECT_NE(out.text.find("hero,non_hero,food,spell,item"), std::string::npos);
  EXPECT_EQ(RunCtl("health" + Server()).exit_code, 0);
}

TEST_F(SpritectlTest, SampleWritesSpritesGridAndGif) {
  const fs::path out = daemon_->root() / "out";
  Output run = RunCtl("sample" + Server() + " --label food --count 5 --steps 10 --frame-every 3 --seed 11 --gif --columns 5 --out " +
                      out.string());
  ASSERT_EQ(run.exit_code, 0) << run.text;
  for (int i = 0; i < 5; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "sprite-%03d.png", i);
    Result<Image> sprite = ReadPng((out / name).string());
    ASSERT_TRUE(sprite.ok()) << name;
    EXPECT_EQ(sprite->width, 16);
    EXPECT_EQ(sprite->height, 16);
  }
  EXPECT_FALSE(fs::exists(out / "sprite-005.png"));
  Result<Image> grid = ReadPng((out / "grid.png").string());
  ASSERT_TRUE(grid.ok());
  EXPECT_EQ(grid->width, 5 * 16 * 4 + 6 * 4);  // 5 columns upscaled x4, 4px gaps
  // Frames stream at steps 3, 6, 9; the GIF holds those plus the final grid.
  int error = 0;
  GifFileType* gif = DGifOpenFileName((out / "denoise.gif").c_str(), &error);
  ASSERT_NE(gif, nullptr);
  ASSERT_EQ(DGifSlurp(gif), GIF_OK);
  EXPECT_EQ(gif->ImageCount, 4);
  EXPECT_EQ(gif->SWidth, grid->width);
  DGifCloseFile(gif, &error);
  EXPECT_NE(run.text.find("seeds 11..15"), std::string::npos) << run.text;
}

TEST_F(SpritectlTest, BadFlagValuesPrintOneClearLineAndFail) {
  Output steps = RunCtl("sample" + Server() + " --steps 9999 --out " + (daemon_->root() / "x").string());
  EXPECT_NE(steps.exit_code, 0);
  EXPECT_NE(steps.text.find("INVALID_ARGUMENT: steps must be in [1, 500]"), std::string::npos) << steps.text;
  Output label = RunCtl("sample" + Server() + " --label dragon --out " + (daemon_->root() / "x").string());
  EXPECT_NE(label.exit_code, 0);
  EXPECT_NE(label.text.find("dragon"), std::string::npos) << label.text;
  Output sampler = RunCtl("sample" + Server() + " --sampler euler --out x");
  EXPECT_NE(sampler.exit_code, 0);
  EXPECT_NE(sampler.text.find("--sampler"), std::string::npos) << sampler.text;
  Output weight = RunCtl("sample" + Server() + " --label food:lots --out x");
  EXPECT_NE(weight.exit_code, 0);
  EXPECT_NE(weight.text.find("food:lots"), std::string::npos) << weight.text;
  Output away = RunCtl("models --server 127.0.0.1:" + std::to_string(FreePort()) + " --connect-timeout 1");
  EXPECT_NE(away.exit_code, 0);
  EXPECT_NE(away.text.find("cannot reach spritediffd"), std::string::npos) << away.text;
}

TEST_F(SpritectlTest, BenchWithAFewClientsReportsNoErrors) {
  Output out = RunCtl("bench" + Server() + " --clients 4 --requests 2 --count 1 --steps 5 --frame-every 1 --json");
  ASSERT_EQ(out.exit_code, 0) << out.text;
  const nlohmann::json report = nlohmann::json::parse(out.text);
  EXPECT_EQ(report["ok"], 8);
  EXPECT_TRUE(report["errors"].empty());
  EXPECT_EQ(report["sprites"], 8);
  EXPECT_GT(report["sprites_per_s"].get<double>(), 0);
  EXPECT_GT(report["latency_ms"]["p50"].get<double>(), 0);
  EXPECT_LE(report["first_event_ms"]["p95"].get<double>(), report["latency_ms"]["p99"].get<double>());
}

}  // namespace
}  // namespace spritediff::e2e
