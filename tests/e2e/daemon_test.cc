// End-to-end: the real daemon over gRPC.
#include <future>

#include "common/image.h"
#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

using v1::SampleEvent;
using v1::SampleRequest;

// No wait limit (max_queue_wait_s): these tests fill the queue to max_queued_rows on purpose.
constexpr const char* kConfig = R"({"max_batch_rows": 8, "max_queued_rows": 16, "max_rows_per_request": 8,
  "max_frames_per_request": 100, "max_pending_frames": 1000, "shutdown_grace_s": 5, "max_queue_wait_s": 0})";

class DaemonTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new Daemon();
    daemon_->Start(kConfig);
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(daemon_->Stop(), 0) << daemon_->Log();
    delete daemon_;
  }
  std::unique_ptr<v1::Sprites::Stub> Stub() { return v1::Sprites::NewStub(daemon_->channel()); }
  static Daemon* daemon_;
};
Daemon* DaemonTest::daemon_ = nullptr;

struct Collected {
  grpc::Status status;
  std::vector<v1::Frame> frames;
  v1::Result result;
  bool has_result = false;
};

Collected Sample(v1::Sprites::Stub& stub, const SampleRequest& req, double timeout_s = 60) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int>(timeout_s * 1000)));
  Collected c;
  auto reader = stub.Sample(&ctx, req);
  SampleEvent ev;
  while (reader->Read(&ev)) {
    if (ev.has_frame()) c.frames.push_back(ev.frame());
    if (ev.has_result()) {
      c.result = ev.result();
      c.has_result = true;
    }
  }
  c.status = reader->Finish();
  return c;
}

SampleRequest Request(int count, v1::Sampler sampler, int steps, uint64_t seed, const std::string& label = "food") {
  SampleRequest r;
  r.set_count(count);
  r.set_sampler(sampler);
  r.set_steps(steps);
  r.set_seed(seed);
  r.add_labels()->set_label(label);
  return r;
}

Image Decode(const std::string& png) {
  Result<Image> image = DecodePng(png);
  EXPECT_TRUE(image.ok());
  return image.ok() ? CompositeOnBlack(*image) : Image();
}

TEST_F(DaemonTest, HealthAndModelListing) {
  auto health = grpc::health::v1::Health::NewStub(daemon_->channel());
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  req.set_service("spritediff.v1.Sprites");
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  auto stub = Stub();
  grpc::ClientContext lctx;
  v1::ListModelsResponse list;
  ASSERT_TRUE(stub->ListModels(&lctx, {}, &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).name(), "tiny");
  EXPECT_TRUE(list.models(0).is_default());
  EXPECT_EQ(list.models(0).labels_size(), 5);
  EXPECT_EQ(list.models(0).schedule().timesteps(), 500u);

  grpc::ClientContext gctx;
  v1::GetModelRequest get;
  get.set_name("nope");
  v1::ModelInfo info;
  EXPECT_EQ(stub->GetModel(&gctx, get, &info).error_code(), grpc::StatusCode::NOT_FOUND);

  // A name past the 128-byte bound is refused as such, naming the field, not looked up.
  grpc::ClientContext hctx;
  get.set_name(std::string(100000, 'x'));
  const grpc::Status huge = stub->GetModel(&hctx, get, &info);
  EXPECT_EQ(huge.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(huge.error_message().find("name must be at most 128 bytes"), std::string::npos) << huge.error_message();
}

TEST_F(DaemonTest, StreamsFramesThenAResultWithValidPngs) {
  auto stub = Stub();
  SampleRequest req = Request(3, v1::SAMPLER_DDIM, 10, 42);
  req.set_frame_every(2);
  req.set_include_x0(true);
  req.set_guidance_scale(2.0f);
  Collected c = Sample(*stub, req);
  ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  // Frames at steps 2, 4, 6, 8; step 10 is the Result.
  ASSERT_EQ(c.frames.size(), 4u);
  for (size_t i = 0; i < c.frames.size(); ++i) {
    EXPECT_EQ(c.frames[i].step(), 2 * (i + 1));
    EXPECT_EQ(c.frames[i].total_steps(), 10u);
    EXPECT_EQ(c.frames[i].t(), 500u - 50u * c.frames[i].step());
    EXPECT_EQ(c.frames[i].images_size(), 3);
    EXPECT_EQ(c.frames[i].x0_images_size(), 3);
  }
  ASSERT_TRUE(c.has_result);
  ASSERT_EQ(c.result.images_size(), 3);
  EXPECT_EQ(c.result.seeds(0), 42u);
  EXPECT_EQ(c.result.seeds(2), 44u);
  EXPECT_EQ(c.result.model(), "tiny");
  for (const auto& png : c.result.images()) {
    Image im = Decode(png);
    EXPECT_EQ(im.width, 16);
    EXPECT_EQ(im.height, 16);
  }
  // frame_every 0: the result alone.
  req.set_frame_every(0);
  Collected quiet = Sample(*stub, req);
  ASSERT_TRUE(quiet.status.ok());
  EXPECT_TRUE(quiet.frames.empty());
  EXPECT_EQ(quiet.result.images(0), c.result.images(0)) << "same seed, same request, same sprite";
}

TEST_F(DaemonTest, SameSeedAloneOrUnderSixteenConcurrentStrangers) {
  auto stub = Stub();
  SampleRequest mine = Request(1, v1::SAMPLER_DDIM, 20, 7, "food");
  mine.set_guidance_scale(2.0f);
  Collected alone = Sample(*stub, mine);
  ASSERT_TRUE(alone.status.ok());

  std::vector<std::future<Collected>> strangers;
  for (int i = 0; i < 16; ++i) {
    strangers.push_back(std::async(std::launch::async, [i] {
      auto s = v1::Sprites::NewStub(grpc::CreateChannel(daemon_->address(), grpc::InsecureChannelCredentials()));
      SampleRequest r = Request(1, i % 3 == 0 ? v1::SAMPLER_DDPM : v1::SAMPLER_DDIM, 15 + i, 1000 + i,
                                i % 2 ? "hero" : "spell");
      r.set_guidance_scale(1.0f + i % 3);
      r.set_eta(0.5f);
      r.set_frame_every(i % 4);
      return Sample(*s, r);
    }));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  Collected crowded = Sample(*stub, mine);
  int ok = 0;
  for (auto& f : strangers) ok += f.get().status.ok();
  EXPECT_EQ(ok, 16);
  ASSERT_TRUE(crowded.status.ok());
  Image a = Decode(alone.result.images(0)), b = Decode(crowded.result.images(0));
  ASSERT_EQ(a.pixels.size(), b.pixels.size());
  int max_diff = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) max_diff = std::max(max_diff, std::abs(a.pixels[i] - b.pixels[i]));
  EXPECT_LE(max_diff, 1) << "float rounding may move a channel by one level, never more";
}

TEST_F(DaemonTest, BadInputsGetTheRightCodeAndNameTheField) {
  auto stub = Stub();
  struct Case {
    std::string name;
    std::function<void(SampleRequest&)> edit;
    grpc::StatusCode code;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"model", [](SampleRequest& r) { r.set_model("no-such-model"); }, grpc::StatusCode::NOT_FOUND, "no-such-model"},
      {"count", [](SampleRequest& r) { r.set_count(9); }, grpc::StatusCode::INVALID_ARGUMENT, "count"},
      {"steps", [](SampleRequest& r) { r.set_steps(501); }, grpc::StatusCode::INVALID_ARGUMENT, "steps"},
      {"eta", [](SampleRequest& r) { r.set_eta(1.5f); }, grpc::StatusCode::INVALID_ARGUMENT, "eta"},
      {"eta nan", [](SampleRequest& r) { r.set_eta(std::nanf("")); }, grpc::StatusCode::INVALID_ARGUMENT, "eta"},
      {"guidance", [](SampleRequest& r) { r.set_guidance_scale(21.0f); }, grpc::StatusCode::INVALID_ARGUMENT, "guidance_scale"},
      {"label", [](SampleRequest& r) { r.mutable_labels(0)->set_label("dragon"); }, grpc::StatusCode::INVALID_ARGUMENT, "dragon"},
      {"weight", [](SampleRequest& r) { r.mutable_labels(0)->set_weight(INFINITY); }, grpc::StatusCode::INVALID_ARGUMENT, "weight"},
      {"context length", [](SampleRequest& r) { r.clear_labels(); r.add_context(1.0f); }, grpc::StatusCode::INVALID_ARGUMENT, "context"},
      {"context value", [](SampleRequest& r) { r.clear_labels(); for (int i = 0; i < 5; ++i) r.add_context(i == 2 ? NAN : 0.f); }, grpc::StatusCode::INVALID_ARGUMENT, "context[2]"},
      {"both", [](SampleRequest& r) { for (int i = 0; i < 5; ++i) r.add_context(0.f); }, grpc::StatusCode::INVALID_ARGUMENT, "not both"},
      {"sampler", [](SampleRequest& r) { r.set_sampler(static_cast<v1::Sampler>(7)); }, grpc::StatusCode::INVALID_ARGUMENT, "sampler"},
      {"frame_every", [](SampleRequest& r) { r.set_frame_every(11); }, grpc::StatusCode::INVALID_ARGUMENT, "frame_every"},
  };
  for (const Case& c : cases) {
    SampleRequest r = Request(1, v1::SAMPLER_DDIM, 10, 1);
    c.edit(r);
    Collected got = Sample(*stub, r);
    EXPECT_EQ(got.status.error_code(), c.code) << c.name << ": " << got.status.error_message();
    EXPECT_NE(got.status.error_message().find(c.needle), std::string::npos) << c.name << ": " << got.status.error_message();
    EXPECT_FALSE(got.has_result) << c.name;
  }
  // The daemon is still healthy after all that.
  EXPECT_TRUE(Sample(*stub, Request(1, v1::SAMPLER_DDIM, 2, 1)).status.ok());
}

TEST_F(DaemonTest, CancelMidStreamFreesTheRowsAtOnce) {
  auto stub = Stub();
  // A long request that fills the batch (8 rows of 8), streaming every step.
  SampleRequest lng = Request(8, v1::SAMPLER_DDPM, 500, 3);
  lng.set_frame_every(1);
  grpc::ClientContext ctx;
  auto reader = stub->Sample(&ctx, lng);
  SampleEvent ev;
  ASSERT_TRUE(reader->Read(&ev));
  const auto first = std::chrono::steady_clock::now();
  ASSERT_TRUE(reader->Read(&ev));
  ASSERT_TRUE(reader->Read(&ev));
  const double step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - first).count() / 2;
  ctx.TryCancel();
  while (reader->Read(&ev)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  // Had the rows stayed, this request would wait ~497 more steps for a free slot.
  Collected next = Sample(*stub, Request(8, v1::SAMPLER_DDIM, 5, 4));
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_LT(next.result.queued_ms(), 100 * step_ms) << "step " << step_ms << " ms";
}

TEST_F(DaemonTest, QueueOverflowGetsResourceExhausted) {
  auto stub = Stub();
  SampleRequest lng = Request(8, v1::SAMPLER_DDPM, 500, 5);
  lng.set_frame_every(1);
  grpc::ClientContext lctx;
  auto running = stub->Sample(&lctx, lng);
  SampleEvent ev;
  ASSERT_TRUE(running->Read(&ev));  // admitted and running: the batch is full

  // 16 queued rows fit (max_queued_rows); a third request of 8 does not.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<SampleEvent>>> waiting;
  int exhausted = 0;
  std::string message;
  for (int i = 0; i < 4 && exhausted == 0; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    auto r = stub->Sample(contexts.back().get(), Request(8, v1::SAMPLER_DDIM, 5, 100 + i));
    if (i < 2) {
      waiting.push_back(std::move(r));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    while (r->Read(&ev)) {
    }
    grpc::Status s = r->Finish();
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++exhausted;
      message = s.error_message();
    }
  }
  EXPECT_EQ(exhausted, 1);
  EXPECT_NE(message.find("max_queued_rows"), std::string::npos) << message;
  lctx.TryCancel();
  while (running->Read(&ev)) {
  }
  running->Finish();
  for (auto& r : waiting) {  // the queued ones run once the batch frees
    while (r->Read(&ev)) {
    }
    EXPECT_TRUE(r->Finish().ok());
  }
}

TEST_F(DaemonTest, DeadlineEndsARequestWithDeadlineExceeded) {
  auto stub = Stub();
  Collected c = Sample(*stub, Request(2, v1::SAMPLER_DDPM, 500, 9), 0.3);
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(Sample(*stub, Request(1, v1::SAMPLER_DDIM, 3, 9)).status.ok()) << "the rows were retired";
}

}  // namespace
}  // namespace spritediff::e2e
