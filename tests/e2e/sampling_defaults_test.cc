// End-to-end: per-model sampling defaults and the DPM-Solver++ samplers through the daemon,
// spritectl and the offline `spritediffd sample`.
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "common/image.h"
#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

using v1::SampleRequest;

// The test model's recorded defaults: deliberately unlike the built-in DDIM-25, eta 0, w 1.
constexpr int kSteps = 6;
constexpr float kEta = 0.5f;
constexpr float kGuidance = 3.0f;
constexpr float kGuidanceHigh = 0.75f;  // guided only at steps from t <= 0.75 T

class SamplingDefaultsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new Daemon();
    daemon_->Start(kConfig);
    ASSERT_EQ(daemon_->Stop(), 0);
    // Record defaults in tiny's model.json and restart on the same directory.
    const fs::path json_path = daemon_->root() / "models" / "tiny" / "model.json";
    nlohmann::json j = nlohmann::json::parse(std::ifstream(json_path));
    j["sampling"] = {{"sampler", "dpmpp-2m-sde"}, {"steps", kSteps}, {"eta", kEta}, {"guidance", kGuidance},
                     {"guidance_interval", {0.0, kGuidanceHigh}}};
    std::ofstream(json_path) << j.dump(2);
    daemon_->Start(kConfig);
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(daemon_->Stop(), 0) << daemon_->Log();
    delete daemon_;
  }
  std::unique_ptr<v1::Sprites::Stub> Stub() { return v1::Sprites::NewStub(daemon_->channel()); }
  std::string Server() { return " --server " + daemon_->address(); }

  struct Done {
    grpc::Status status;
    v1::Result result;
  };
  Done Sample(const SampleRequest& req) {
    auto stub = Stub();
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto reader = stub->Sample(&ctx, req);
    v1::SampleEvent ev;
    Done d;
    while (reader->Read(&ev))
      if (ev.has_result()) d.result = ev.result();
    d.status = reader->Finish();
    return d;
  }
  static SampleRequest LabelsOnly(uint64_t seed, int count = 2) {
    SampleRequest r;
    r.set_count(count);
    r.set_seed(seed);
    r.add_labels()->set_label("food");
    return r;
  }

  static constexpr const char* kConfig = R"({"max_batch_rows": 16, "max_rows_per_request": 16})";
  static Daemon* daemon_;
};
Daemon* SamplingDefaultsTest::daemon_ = nullptr;

int MaxPixelDifference(const std::string& png_a, const std::string& png_b) {
  Result<Image> a = DecodePng(png_a), b = DecodePng(png_b);
  EXPECT_TRUE(a.ok() && b.ok());
  if (!a.ok() || !b.ok() || a->pixels.size() != b->pixels.size()) return 256;
  int worst = 0;
  for (size_t i = 0; i < a->pixels.size(); ++i) worst = std::max(worst, std::abs(a->pixels[i] - b->pixels[i]));
  return worst;
}

TEST_F(SamplingDefaultsTest, ListModelsReportsTheRecordedDefaults) {
  auto stub = Stub();
  grpc::ClientContext ctx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModel(&ctx, v1::GetModelRequest(), &info).ok());
  EXPECT_EQ(info.sampling().sampler(), v1::SAMPLER_DPMPP_2M_SDE);
  EXPECT_EQ(info.sampling().steps(), static_cast<uint32_t>(kSteps));
  EXPECT_FLOAT_EQ(info.sampling().eta(), kEta);
  EXPECT_FLOAT_EQ(info.sampling().guidance_scale(), kGuidance);
  EXPECT_FLOAT_EQ(info.sampling().guidance_interval_low(), 0.0f);
  EXPECT_FLOAT_EQ(info.sampling().guidance_interval_high(), kGuidanceHigh);
}

// The guidance interval: unset is the model's, set is the request's, the Result says which, and a
// bad one is INVALID_ARGUMENT naming the field.
TEST_F(SamplingDefaultsTest, GuidanceIntervalIsTheModelsUnlessSetAndChecked) {
  const Done implicit = Sample(LabelsOnly(31));
  ASSERT_TRUE(implicit.status.ok()) << implicit.status.error_message();
  EXPECT_FLOAT_EQ(implicit.result.guidance_interval_low(), 0.0f);
  EXPECT_FLOAT_EQ(implicit.result.guidance_interval_high(), kGuidanceHigh);
  SampleRequest everywhere = LabelsOnly(31);
  everywhere.set_guidance_interval_high(1.0f);
  const Done all = Sample(everywhere);
  ASSERT_TRUE(all.status.ok()) << all.status.error_message();
  EXPECT_FLOAT_EQ(all.result.guidance_interval_high(), 1.0f);
  // Spelled out, the model's interval gives the model's sprites (what the interval does to the
  // pixels is core's test, GuidanceIntervalOutsideEveryStepIsTheConditionalRow: this tiny random
  // network's guidance barely moves a pixel).
  SampleRequest spelled = LabelsOnly(31);
  spelled.set_guidance_interval_low(0.0f);
  spelled.set_guidance_interval_high(kGuidanceHigh);
  const Done same = Sample(spelled);
  ASSERT_TRUE(same.status.ok());
  EXPECT_LE(MaxPixelDifference(implicit.result.images(0), same.result.images(0)), 1);
  SampleRequest bad = LabelsOnly(31);
  bad.set_guidance_interval_low(0.9f);
  bad.set_guidance_interval_high(0.2f);
  const Done refused = Sample(bad);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(refused.status.error_message().rfind("guidance_interval", 0), 0u) << refused.status.error_message();
}

TEST_F(SamplingDefaultsTest, UnsetFieldsTakeTheModelsDefaultsAndResultSaysSo) {
  const Done implicit = Sample(LabelsOnly(21));
  ASSERT_TRUE(implicit.status.ok()) << implicit.status.error_message();
  EXPECT_EQ(implicit.result.sampler(), v1::SAMPLER_DPMPP_2M_SDE);
  EXPECT_EQ(implicit.result.steps(), static_cast<uint32_t>(kSteps));
  EXPECT_FLOAT_EQ(implicit.result.eta(), kEta);
  EXPECT_FLOAT_EQ(implicit.result.guidance_scale(), kGuidance);
  // The same request with every default spelled out gives the same sprites.
  SampleRequest spelled = LabelsOnly(21);
  spelled.set_sampler(v1::SAMPLER_DPMPP_2M_SDE);
  spelled.set_steps(kSteps);
  spelled.set_eta(kEta);
  spelled.set_guidance_scale(kGuidance);
  const Done explicit_ = Sample(spelled);
  ASSERT_TRUE(explicit_.status.ok());
  ASSERT_EQ(explicit_.result.images_size(), 2);
  for (int i = 0; i < 2; ++i) EXPECT_LE(MaxPixelDifference(implicit.result.images(i), explicit_.result.images(i)), 1);
  // An explicit eta of 0 is not "unset": it gives different (ODE, 2M) sprites.
  SampleRequest ode = LabelsOnly(21);
  ode.set_eta(0.0f);
  const Done zero = Sample(ode);
  ASSERT_TRUE(zero.status.ok());
  EXPECT_FLOAT_EQ(zero.result.eta(), 0.0f);
  EXPECT_GT(MaxPixelDifference(implicit.result.images(0), zero.result.images(0)), 1);
}

TEST_F(SamplingDefaultsTest, AnotherSamplerGetsItsOwnStepsAndEtaButTheModelsGuidance) {
  SampleRequest ddim = LabelsOnly(5, 1);
  ddim.set_sampler(v1::SAMPLER_DDIM);
  const Done d = Sample(ddim);
  ASSERT_TRUE(d.status.ok()) << d.status.error_message();
  EXPECT_EQ(d.result.sampler(), v1::SAMPLER_DDIM);
  EXPECT_EQ(d.result.steps(), 25u);
  EXPECT_FLOAT_EQ(d.result.eta(), 0.0f);
  EXPECT_FLOAT_EQ(d.result.guidance_scale(), kGuidance);
  SampleRequest two_m = LabelsOnly(5, 1);
  two_m.set_sampler(v1::SAMPLER_DPMPP_2M);
  two_m.set_steps(4);
  two_m.set_eta(1.0f);  // ignored by 2M, reported as 0
  two_m.set_guidance_scale(1.0f);
  const Done m = Sample(two_m);
  ASSERT_TRUE(m.status.ok()) << m.status.error_message();
  EXPECT_EQ(m.result.sampler(), v1::SAMPLER_DPMPP_2M);
  EXPECT_EQ(m.result.steps(), 4u);
  EXPECT_FLOAT_EQ(m.result.eta(), 0.0f);
  EXPECT_FLOAT_EQ(m.result.guidance_scale(), 1.0f);
}

TEST_F(SamplingDefaultsTest, SpritectlSendsOnlyWhatTheUserSetAndPrintsWhatWasUsed) {
  const fs::path out = daemon_->root() / "ctl";
  Output run = RunCtl("sample" + Server() + " --label food --count 2 --seed 21 --quiet --out " + out.string());
  ASSERT_EQ(run.exit_code, 0) << run.text;
  EXPECT_NE(run.text.find("(dpmpp-2m-sde, 6 steps, eta 0.5, guidance 3,"), std::string::npos) << run.text;
  // The offline command resolves unset flags by the same rule: the same sprites.
  const fs::path offline = daemon_->root() / "offline";
  Output off = RunBin("spritediffd", "--threads 1 --device cpu sample --model " +
                                          (daemon_->root() / "models" / "tiny").string() +
                                          " --label food --count 2 --seed 21 --out " + offline.string());
  ASSERT_EQ(off.exit_code, 0) << off.text;
  EXPECT_NE(off.text.find("dpmpp-2m-sde 6 steps, eta 0.5, guidance 3"), std::string::npos) << off.text;
  for (const char* name : {"sprite-000.png", "sprite-001.png"}) {
    std::ifstream a(out / name, std::ios::binary), b(offline / name, std::ios::binary);
    const std::string pa((std::istreambuf_iterator<char>(a)), {}), pb((std::istreambuf_iterator<char>(b)), {});
    EXPECT_LE(MaxPixelDifference(pa, pb), 1) << name;
  }
  Output models = RunCtl("models" + Server());
  EXPECT_NE(models.text.find("dpmpp-2m-sde-6 eta 0.5 guidance 3"), std::string::npos) << models.text;
  // No default deadline for sample, but --timeout still sets one (DDPM-500 takes far longer).
  Output late = RunCtl("sample" + Server() + " --sampler ddpm --count 8 --timeout 0.3 --quiet --out " + out.string());
  EXPECT_NE(late.exit_code, 0);
  EXPECT_NE(late.text.find("DEADLINE_EXCEEDED"), std::string::npos) << late.text;
  Output bad = RunCtl("sample" + Server() + " --sampler dpmpp-3m --out " + out.string());
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.text.find("--sampler"), std::string::npos) << bad.text;
}

}  // namespace
}  // namespace spritediff::e2e
