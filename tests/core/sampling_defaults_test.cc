#include "core/sampling_defaults.h"

#include <gtest/gtest.h>

#include "core/checkpoint.h"

namespace spritediff {
namespace {

using nlohmann::json;

SamplingDefaults Bundled() {  // what models/sprites16/model.json records
  SamplingDefaults d;
  d.sampler = SamplerKind::kDdim;
  d.steps = 25;
  d.eta = 1.0;
  d.guidance = 2.0;
  return d;
}

TEST(SamplingDefaults, BuiltinIsTheDaemonsOldBehaviour) {
  const SamplingDefaults d = BuiltinSamplingDefaults(500);
  EXPECT_EQ(d.sampler, SamplerKind::kDdim);
  EXPECT_EQ(d.steps, 25);
  EXPECT_EQ(d.eta, 0.0);
  EXPECT_EQ(d.guidance, 1.0);
  EXPECT_EQ(BuiltinSamplingDefaults(10).steps, 10) << "never more steps than T";
}

TEST(SamplingDefaults, UnsetFieldsTakeTheModelsDefaults) {
  const SamplingDefaults got = ResolveSampling(SamplingChoice{}, Bundled(), 500);
  EXPECT_EQ(got.sampler, SamplerKind::kDdim);
  EXPECT_EQ(got.steps, 25);
  EXPECT_EQ(got.eta, 1.0);
  EXPECT_EQ(got.guidance, 2.0);
  // Naming the model's own sampler changes nothing.
  SamplingChoice same;
  same.sampler = SamplerKind::kDdim;
  EXPECT_EQ(ResolveSampling(same, Bundled(), 500).eta, 1.0);
}

TEST(SamplingDefaults, SetFieldsWin) {
  SamplingChoice c;
  c.steps = 40;
  c.eta = 0.0;  // an explicit 0 is not "unset"
  c.guidance = 1.0;
  const SamplingDefaults got = ResolveSampling(c, Bundled(), 500);
  EXPECT_EQ(got.steps, 40);
  EXPECT_EQ(got.eta, 0.0);
  EXPECT_EQ(got.guidance, 1.0);
}

TEST(SamplingDefaults, AnotherSamplerGetsItsOwnStepsAndEtaButTheModelsGuidance) {
  SamplingChoice ddpm;
  ddpm.sampler = SamplerKind::kDdpm;
  SamplingDefaults got = ResolveSampling(ddpm, Bundled(), 500);
  EXPECT_EQ(got.steps, 500);
  EXPECT_EQ(got.guidance, 2.0);
  SamplingChoice sde;
  sde.sampler = SamplerKind::kDpmpp2mSde;
  got = ResolveSampling(sde, BuiltinSamplingDefaults(500), 500);
  EXPECT_EQ(got.steps, 25);
  EXPECT_EQ(got.eta, 1.0) << "the SDE variant's own eta, not DDIM's 0";
  SamplingChoice two_m;
  two_m.sampler = SamplerKind::kDpmpp2m;
  EXPECT_EQ(ResolveSampling(two_m, Bundled(), 500).eta, 0.0);
}

TEST(SamplingDefaults, JsonRoundTripAndErrorsNameTheField) {
  SamplingDefaults d = Bundled();
  d.sampler = SamplerKind::kDpmpp2mSde;
  d.steps = 15;
  d.eta = 0.5;
  Result<SamplingDefaults> back = SamplingDefaultsFromJson(SamplingDefaultsToJson(d), 500);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->sampler, d.sampler);
  EXPECT_EQ(back->steps, d.steps);
  EXPECT_EQ(back->eta, d.eta);
  EXPECT_EQ(back->guidance, d.guidance);

  // The interval is written only when it is not every step, and read back.
  EXPECT_FALSE(SamplingDefaultsToJson(d).contains("guidance_interval"));
  d.guidance_low = 0.0;
  d.guidance_high = 0.7;
  ASSERT_TRUE(SamplingDefaultsToJson(d).contains("guidance_interval"));
  Result<SamplingDefaults> interval = SamplingDefaultsFromJson(SamplingDefaultsToJson(d), 500);
  ASSERT_TRUE(interval.ok()) << interval.status().message();
  EXPECT_EQ(interval->guidance_low, 0.0);
  EXPECT_EQ(interval->guidance_high, 0.7);
  SamplingChoice none;
  EXPECT_EQ(ResolveSampling(none, d, 500).guidance_high, 0.7) << "an unset interval is the model's";
  SamplingChoice set;
  set.guidance_high = 1.0;
  EXPECT_EQ(ResolveSampling(set, d, 500).guidance_high, 1.0);

  Result<SamplingDefaults> partial = SamplingDefaultsFromJson(json{{"guidance", 3.0}}, 500);
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ(partial->guidance, 3.0);
  EXPECT_EQ(partial->steps, 25);

  const std::vector<std::pair<json, std::string>> bad{
      {json{{"sampler", "euler"}}, "sampling.sampler"}, {json{{"sampler", 3}}, "sampling.sampler"},
      {json{{"steps", 0}}, "sampling.steps"},           {json{{"steps", 501}}, "sampling.steps"},
      {json{{"steps", 2.5}}, "sampling.steps"},         {json{{"eta", 1.5}}, "sampling.eta"},
      {json{{"eta", "1"}}, "sampling.eta"},             {json{{"guidance", -1}}, "sampling.guidance"},
      {json{{"guidence", 2}}, "guidence"},              {json::array(), "object"},
      {json{{"guidance_interval", {0.5, 0.2}}}, "sampling.guidance_interval"},
      {json{{"guidance_interval", {0.0, 1.5}}}, "sampling.guidance_interval"},
      {json{{"guidance_interval", 0.5}}, "sampling.guidance_interval"},
      {json{{"guidance_interval", {0.1, "x"}}}, "sampling.guidance_interval"},
  };
  for (const auto& [j, field] : bad) {
    Result<SamplingDefaults> r = SamplingDefaultsFromJson(j, 500);
    ASSERT_FALSE(r.ok()) << j.dump();
    EXPECT_NE(r.status().message().find(field), std::string::npos) << r.status().message();
  }
}

TEST(SamplingDefaults, ModelJsonCarriesThemAndRefusesBadOnes) {
  ModelInfo info;
  info.name = "tiny";
  info.labels = {"a", "b", "c", "d", "e"};
  EXPECT_FALSE(ModelInfoToJson(info).contains("sampling")) << "absent stays absent";
  Result<ModelInfo> plain = ModelInfoFromJson(ModelInfoToJson(info), "model.json");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->sampling.has_value());
  EXPECT_EQ(EffectiveSamplingDefaults(*plain).eta, 0.0);

  info.sampling = Bundled();
  json j = ModelInfoToJson(info);
  Result<ModelInfo> with = ModelInfoFromJson(j, "model.json");
  ASSERT_TRUE(with.ok()) << with.status().message();
  ASSERT_TRUE(with->sampling.has_value());
  EXPECT_EQ(EffectiveSamplingDefaults(*with).guidance, 2.0);

  j["sampling"]["steps"] = 9999;
  Result<ModelInfo> bad = ModelInfoFromJson(j, "model.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("sampling.steps"), std::string::npos) << bad.status().message();
}

TEST(SamplingDefaults, TheBundledModelRecordsTheMetersBestSettings) {
  Result<ModelInfo> info = ReadModelInfo(std::string(SPRITEDIFF_SOURCE_DIR) + "/models/sprites16");
  ASSERT_TRUE(info.ok()) << info.status().message();
  ASSERT_TRUE(info->sampling.has_value());
  EXPECT_EQ(info->sampling->sampler, SamplerKind::kDdim);
  EXPECT_EQ(info->sampling->steps, 25);
  EXPECT_EQ(info->sampling->eta, 1.0);
  EXPECT_EQ(info->sampling->guidance, 2.5);  // models/sprites16/README.md: the meter's table
  EXPECT_EQ(info->sampling->guidance_low, 0.0);
  EXPECT_EQ(info->sampling->guidance_high, 0.6);
}

}  // namespace
}  // namespace spritediff
