// End-to-end: the holes a hostile client found (issue 13: 2, 3, 8) stay closed. Each test
// failed before its fix.
#include <httplib.h>

#include <regex>

#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

grpc::Status SampleOnce(v1::Sprites::Stub& stub, const v1::SampleRequest& req) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto reader = stub.Sample(&ctx, req);
  v1::SampleEvent ev;
  while (reader->Read(&ev)) {
  }
  return reader->Finish();
}

size_t LongestLine(const std::string& text) {
  size_t longest = 0, start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    longest = std::max(longest, end - start);
    start = end + 1;
  }
  return longest;
}

TEST(AbuseTest, UnknownModelNamesShareOneMetricsSeries) {
  const int metrics_port = FreePort();
  Daemon d;
  d.Start(R"({"metrics_port": )" + std::to_string(metrics_port) + "}");
  auto stub = v1::Sprites::NewStub(d.channel());
  const int kNames = 20;
  for (int i = 0; i < kNames; ++i) {
    v1::SampleRequest req;
    req.set_model("no-such-model-" + std::to_string(i) + std::string(100, 'z'));  // under the 128-byte cap
    EXPECT_EQ(SampleOnce(*stub, req).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  httplib::Client http("127.0.0.1", metrics_port);
  auto res = http.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body.find("no-such-model"), std::string::npos) << "a client-invented name became a label";
  EXPECT_NE(res->body.find("spritediff_sample_requests_total{model=\"(unknown)\",code=\"NOT_FOUND\"} " +
                           std::to_string(kNames)),
            std::string::npos)
      << res->body;
  EXPECT_LT(res->body.size(), 20000u);
  stub.reset();
  EXPECT_EQ(d.Stop(), 0) << d.Log();
}

TEST(AbuseTest, HugeClientStringsAreBoundedAndEchoedShort) {
  Daemon d;
  d.Start(R"({"max_concurrent_jobs": 1})");
  auto sprites = v1::Sprites::NewStub(d.channel());
  auto training = v1::Training::NewStub(d.channel());
  {
    v1::SampleRequest req;
    req.set_model(std::string(100000, 'm'));
    const grpc::Status s = SampleOnce(*sprites, req);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message().substr(0, 200);
    EXPECT_NE(s.error_message().find("model must be at most"), std::string::npos);
    EXPECT_LT(s.error_message().size(), 1000u);
  }
  {
    v1::SampleRequest req;
    req.add_labels()->set_label(std::string(3 << 20, 'l'));
    const grpc::Status s = SampleOnce(*sprites, req);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message().substr(0, 200);
    EXPECT_LT(s.error_message().size(), 1000u);
  }
  {
    v1::SampleRequest req;  // short enough to pass the bound, unknown to the model: echoed truncated
    req.add_labels()->set_label(std::string(100, 'q') + "\n\x01");
    const grpc::Status s = SampleOnce(*sprites, req);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("unknown label"), std::string::npos) << s.error_message();
    EXPECT_EQ(s.error_message().find('\n'), std::string::npos) << "control characters are escaped";
    EXPECT_LT(s.error_message().size(), 400u) << s.error_message();
  }
  {
    v1::JobSpec spec;
    spec.set_model_name("fine");
    spec.set_dataset(std::string(100000, 'd'));
    grpc::ClientContext ctx;
    v1::Job job;
    const grpc::Status s = training->SubmitJob(&ctx, spec, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message().substr(0, 200);
    EXPECT_NE(s.error_message().find("dataset must be at most"), std::string::npos);
    EXPECT_LT(s.error_message().size(), 1000u);
  }
  {
    v1::JobSpec spec;
    spec.set_model_name(std::string(100000, 'n'));
    spec.set_dataset("x");
    grpc::ClientContext ctx;
    v1::Job job;
    const grpc::Status s = training->SubmitJob(&ctx, spec, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_LT(s.error_message().size(), 1000u);
  }
  {
    v1::JobRef ref;
    ref.set_id(std::string(100000, 'j'));
    grpc::ClientContext ctx;
    v1::Job job;
    const grpc::Status s = training->GetJob(&ctx, ref, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_LT(s.error_message().size(), 1000u);
  }
  // The channel that carried all of that still works.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListModelsResponse models;
  ASSERT_TRUE(sprites->ListModels(&ctx, {}, &models).ok());
  EXPECT_EQ(models.models_size(), 1);
  sprites.reset();
  training.reset();
  EXPECT_EQ(d.Stop(), 0) << d.Log();
  EXPECT_LT(LongestLine(d.Log()), 2000u) << "a client string reached the log at full size";
}

TEST(AbuseTest, StartUpSweepsTemporariesAndOrphanWeights) {
  Daemon d;
  d.Start("{}");
  ASSERT_EQ(d.Stop(), 0) << d.Log();
  // What a kill -9 during a checkpoint or a publish leaves behind.
  const fs::path model = d.root() / "models" / "tiny";
  std::string served_weights;
  for (const auto& e : fs::directory_iterator(model)) {
    if (e.path().filename().string().rfind("weights-", 0) == 0) served_weights = e.path().filename().string();
  }
  ASSERT_FALSE(served_weights.empty());
  const fs::path half = model / "weights-1.pt.tmp";
  const fs::path orphan = model / "weights-2.pt";
  const fs::path publish_tmp = d.root() / "models" / ".other.tmp-job-000001";
  const fs::path state_tmp = d.root() / "state" / "job-000001" / "train-state.pt.tmp";
  std::ofstream(half) << "half a file";
  fs::copy_file(model / served_weights, orphan);
  fs::create_directories(publish_tmp);
  std::ofstream(publish_tmp / "model.json") << "{}";
  fs::create_directories(state_tmp.parent_path());
  std::ofstream(state_tmp) << "half a checkpoint";

  d.Start("{}");
  EXPECT_FALSE(fs::exists(half));
  EXPECT_FALSE(fs::exists(orphan));
  EXPECT_FALSE(fs::exists(publish_tmp));
  EXPECT_FALSE(fs::exists(state_tmp));
  EXPECT_TRUE(fs::exists(model / served_weights)) << "the weights model.json names stay";
  auto stub = v1::Sprites::NewStub(d.channel());
  v1::SampleRequest req;
  req.set_steps(2);
  EXPECT_TRUE(SampleOnce(*stub, req).ok());
  stub.reset();
  EXPECT_EQ(d.Stop(), 0) << d.Log();
  EXPECT_NE(d.Log().find("start-up sweep: removed 3 temporaries and 1 orphan weights"), std::string::npos) << d.Log();
}

}  // namespace
}  // namespace spritediff::e2e
