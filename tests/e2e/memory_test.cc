// End-to-end: the daemon's heap memory. With tcmalloc (the default build) the pages a batch
// used stay with the process while it serves, and go back to the system once it is idle.
#include <fstream>

#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

int64_t RssKiB(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  int64_t value = 0;
  while (status >> key) {
    if (key == "VmRSS:" && status >> value) return value;
    status.ignore(1 << 20, '\n');
  }
  return -1;
}

TEST(MemoryTest, BatchPagesGoBackToTheSystemOnceIdle) {
  Daemon d;
  d.Start(R"({"max_batch_rows": 256, "max_rows_per_request": 256, "max_queued_rows": 256, "release_idle_s": 4})");
  if (d.Log().find("heap tcmalloc") == std::string::npos) {
    GTEST_SKIP() << "this build's daemon runs on glibc's malloc (sanitizers, or no tcmalloc)";
  }
  auto stub = v1::Sprites::NewStub(d.channel());
  const int64_t before = RssKiB(d.pid());
  {
    // 256 guided rows: forwards of 512 rows, ~100 MB of activations for the tiny model.
    grpc::ClientContext ctx;
    v1::SampleRequest req;
    req.set_count(256);
    req.set_steps(4);
    req.set_guidance_scale(2.0f);
    req.add_labels()->set_label("food");
    auto reader = stub->Sample(&ctx, req);
    v1::SampleEvent ev;
    while (reader->Read(&ev)) {
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  const auto finished = std::chrono::steady_clock::now();
  const int64_t after = RssKiB(d.pid());
  // tcmalloc kept the batch's pages for the next batch (what keeps RSS flat under load).
  EXPECT_GT(after, before + 32 * 1024) << "RSS before " << before << " KiB, after " << after << " KiB";
  // Not handed back before release_idle_s (4 s): a lull shorter than that keeps them.
  std::this_thread::sleep_until(finished + std::chrono::milliseconds(2500));
  const int64_t lull = RssKiB(d.pid());
  EXPECT_GT(lull, after - 24 * 1024) << "RSS after the batch " << after << " KiB, 2.5 s later " << lull << " KiB";
  // Idle for release_idle_s: most of them go back.
  int64_t now = after;
  for (int i = 0; i < 150 && now > after - 24 * 1024; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    now = RssKiB(d.pid());
  }
  EXPECT_LE(now, after - 24 * 1024) << "RSS after the batch " << after << " KiB, 15 s later " << now << " KiB";
  stub.reset();
  EXPECT_EQ(d.Stop(), 0) << d.Log();
}

}  // namespace
}  // namespace spritediff::e2e
