// End-to-end: models_dir is the source of truth for a running daemon. A model directory copied
// in is served within 10 s; a half-written one (model.json without its weights) is never
// loaded until it is complete; a replaced one swaps in while a long request on the old version
// runs to completion, and short requests sent through the swap all succeed; a removed one is
// retired (NOT_FOUND for new requests).
#include <atomic>
#include <optional>
#include <thread>

#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

using Clock = std::chrono::steady_clock;

class ModelsDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Short requests join the long one's batch at once (no CPU fill limit, no wait limit).
    daemon_.Start(R"({"max_batch_rows": 128, "max_rows_per_request": 64, "cpu_batch_rows": 0, "max_queue_wait_s": 0})");
    staging_ = daemon_.root() / "staging";
    fs::create_directories(staging_);
  }
  void TearDown() override { EXPECT_EQ(daemon_.Stop(), 0) << daemon_.Log(); }

  fs::path Models() const { return daemon_.root() / "models"; }

  // The served model's info, or nullopt when it is not served.
  std::optional<v1::ModelInfo> Served(const std::string& name) {
    auto stub = v1::Sprites::NewStub(daemon_.channel());
    grpc::ClientContext ctx;
    v1::GetModelRequest get;
    get.set_name(name);
    v1::ModelInfo info;
    if (!stub->GetModel(&ctx, get, &info).ok()) return std::nullopt;
    return info;
  }

  // Waits up to 10 s for pred; returns the seconds it took (or a value over 10 when it never held).
  template <typename Pred>
  double WaitFor(Pred pred) {
    const Clock::time_point start = Clock::now();
    while (Clock::now() - start < std::chrono::seconds(10)) {
      if (pred()) return std::chrono::duration<double>(Clock::now() - start).count();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return 1e9;
  }

  grpc::Status Sample(const std::string& model, int count, int steps, v1::Result* result = nullptr) {
    auto stub = v1::Sprites::NewStub(daemon_.channel());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    v1::SampleRequest req;
    req.set_model(model);
    req.set_count(count);
    req.set_sampler(v1::SAMPLER_DDPM);
    req.set_steps(steps);
    req.set_seed(5);
    auto reader = stub->Sample(&ctx, req);
    v1::SampleEvent ev;
    while (reader->Read(&ev)) {
      if (ev.has_result() && result != nullptr) *result = ev.result();
    }
    return reader->Finish();
  }

  Daemon daemon_;
  fs::path staging_;
};

TEST_F(ModelsDirTest, CopiedHalfWrittenReplacedAndRemovedModelsAreFollowed) {
  // Added: a complete directory copied in is served within 10 s.
  WriteTinyModel(staging_, "fresh");
  fs::copy(staging_ / "fresh", Models() / "fresh", fs::copy_options::recursive);
  const double added_s = WaitFor([&] { return Served("fresh").has_value(); });
  EXPECT_LT(added_s, 10.0) << daemon_.Log();
  ASSERT_TRUE(Served("fresh").has_value());
  EXPECT_EQ(Served("fresh")->channels(), 3u);
  EXPECT_TRUE(Sample("fresh", 2, 4).ok());

  // Half-written: model.json whose weights are not there yet is never loaded; once the weights
  // arrive it is.
  WriteTinyModel(staging_, "partial");
  fs::create_directories(Models() / "partial");
  fs::copy_file(staging_ / "partial" / "model.json", Models() / "partial" / "model.json");
  std::this_thread::sleep_for(std::chrono::seconds(4));
  EXPECT_FALSE(Served("partial").has_value()) << daemon_.Log();
  for (const auto& f : fs::directory_iterator(staging_ / "partial")) {
    if (f.path().filename() != "model.json") fs::copy_file(f.path(), Models() / "partial" / f.path().filename());
  }
  EXPECT_LT(WaitFor([&] { return Served("partial").has_value(); }), 10.0) << daemon_.Log();

  // Replaced while a long request runs on the old version (3 channels): it completes with every
  // sprite, short requests sent through the swap all succeed, and the new version (4 channels)
  // takes over within 10 s.
  WriteTinyModel(staging_ / "v2", "fresh", 4, 16);
  fs::copy(staging_ / "v2" / "fresh", Models() / ".fresh-v2", fs::copy_options::recursive);
  std::atomic<bool> long_done{false};
  grpc::Status long_status;
  v1::Result long_result;
  std::thread long_request([&] {
    long_status = Sample("fresh", 64, 500, &long_result);
    long_done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // admitted on the old version
  ASSERT_FALSE(long_done) << "the long request finished before the swap; make it longer";
  fs::rename(Models() / "fresh", staging_ / "fresh-old");
  fs::rename(Models() / ".fresh-v2", Models() / "fresh");
  int short_ok = 0;
  int short_failed = 0;
  bool swapped_while_long_ran = false;
  const Clock::time_point start = Clock::now();
  while (Clock::now() - start < std::chrono::seconds(10)) {
    grpc::Status s = Sample("fresh", 1, 2);
    (s.ok() ? short_ok : short_failed)++;
    EXPECT_TRUE(s.ok()) << s.error_message();
    std::optional<v1::ModelInfo> info = Served("fresh");
    if (info && info->channels() == 4u) {
      swapped_while_long_ran = !long_done;
      break;
    }
  }
  EXPECT_EQ(Served("fresh")->channels(), 4u) << daemon_.Log();
  EXPECT_TRUE(swapped_while_long_ran) << "the swap was not seen while the long request ran";
  long_request.join();
  EXPECT_TRUE(long_status.ok()) << long_status.error_message();
  EXPECT_EQ(long_result.images_size(), 64);
  EXPECT_EQ(long_result.channels(), 3u);  // the version it was admitted on
  EXPECT_GT(short_ok, 0);
  EXPECT_EQ(short_failed, 0);
  EXPECT_TRUE(Sample("fresh", 1, 2).ok());

  // Removed: retired within 10 s; new requests get NOT_FOUND.
  fs::remove_all(Models() / "fresh");
  EXPECT_LT(WaitFor([&] { return !Served("fresh").has_value(); }), 10.0) << daemon_.Log();
  EXPECT_EQ(Sample("fresh", 1, 2).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(Served("tiny").has_value());
  EXPECT_NE(daemon_.Log().find("retired"), std::string::npos) << daemon_.Log();
}

}  // namespace
}  // namespace spritediff::e2e
