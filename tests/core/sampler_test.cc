#include "core/sampler.h"

#include <gtest/gtest.h>

#include <cmath>

namespace spritediff {
namespace {

ModelConfig TinyArch() {
  ModelConfig arch;
  arch.n_feat = 16;
  arch.n_cfeat = 5;
  arch.height = 16;
  return arch;
}

ContextUnet RandomNet() {
  torch::manual_seed(42);
  ContextUnet net(TinyArch());
  net->eval();
  return net;
}

// The last conv of `out` set to zero makes the network predict eps = 0 exactly.
ContextUnet ZeroNoiseNet() {
  ContextUnet net = RandomNet();
  torch::NoGradGuard no_grad;
  for (auto& p : net->named_parameters()) {
    if (p.key() == "out.3.weight" || p.key() == "out.3.bias") p.value().zero_();
  }
  return net;
}

RowSpec Spec(SamplerKind sampler, int steps, double eta, double guidance, int label, uint64_t seed) {
  RowSpec s;
  s.sampler = sampler;
  s.steps = steps;
  s.eta = eta;
  s.guidance = guidance;
  s.context.assign(5, 0.0f);
  s.context[label % 5] = 1.0f;
  s.seed = seed;
  return s;
}

TEST(TimestepSequence, CoversTToZeroStrictlyDecreasing) {
  EXPECT_EQ(TimestepSequence(500, 1), (std::vector<int>{500, 0}));
  const std::vector<int> ddim25 = TimestepSequence(500, 25);
  ASSERT_EQ(ddim25.size(), 26u);
  for (int i = 0; i <= 25; ++i) EXPECT_EQ(ddim25[i], 500 - 20 * i);  // the course's stride
  for (int steps = 1; steps <= 500; ++steps) {
    const std::vector<int> seq = TimestepSequence(500, steps);
    ASSERT_EQ(seq.front(), 500);
    ASSERT_EQ(seq.back(), 0);
    for (size_t i = 1; i < seq.size(); ++i) ASSERT_LT(seq[i], seq[i - 1]) << "steps=" << steps;
  }
}

TEST(StepRule, DdpmMatchesTheStatedUpdate) {
  NoiseSchedule s(ScheduleConfig{});
  for (int t : {500, 250, 2, 1}) {
    const StepRule r = ComputeStepRule(s, SamplerKind::kDdpm, 0.0, t, t - 1);
    EXPECT_NEAR(r.a, 1.0 / std::sqrt(s.alpha(t)), 1e-12);
    EXPECT_NEAR(r.b, -(1.0 - s.alpha(t)) / std::sqrt(1.0 - s.alpha_bar(t)) / std::sqrt(s.alpha(t)), 1e-12);
    EXPECT_NEAR(r.sigma, t > 1 ? std::sqrt(s.beta(t)) : 0.0, 1e-12) << "no noise at t=1";
  }
}

TEST(StepRule, DdimEtaZeroIsDeterministicAndEtaOneIsTheDdpmPosterior) {
  NoiseSchedule s(ScheduleConfig{});
  for (int t : {500, 300, 20, 2}) {
    const StepRule ddim0 = ComputeStepRule(s, SamplerKind::kDdim, 0.0, t, t - 1);
    EXPECT_EQ(ddim0.sigma, 0.0);
    // eta = 1, one step of T: sigma^2 is the DDPM posterior variance beta~_t and the mean
    // coefficients are exactly DDPM's (Song et al. eq. 16 with eta = 1).
    const StepRule ddim1 = ComputeStepRule(s, SamplerKind::kDdim, 1.0, t, t - 1);
    const StepRule ddpm = ComputeStepRule(s, SamplerKind::kDdpm, 0.0, t, t - 1);
    const double beta_tilde = (1.0 - s.alpha_bar(t - 1)) / (1.0 - s.alpha_bar(t)) * s.beta(t);
    EXPECT_NEAR(ddim1.sigma * ddim1.sigma, beta_tilde, 1e-12);
    EXPECT_NEAR(ddim1.a, ddpm.a, 1e-9);
    EXPECT_NEAR(ddim1.b, ddpm.b, 1e-9);
    // For large t the posterior variance approaches beta_t, the variance DDPM samples with.
    if (t >= 300) EXPECT_NEAR(ddim1.sigma * ddim1.sigma / s.beta(t), 1.0, 1e-2);
  }
}

TEST(Sampler, ZeroNoisePredictorFollowsTheClosedForm) {
  ContextUnet net = ZeroNoiseNet();
  NoiseSchedule schedule(ScheduleConfig{});
  // With eps = 0, DDIM (eta = 0) scales by sqrt(ab_s / ab_t) each step: x_0 = x_T / sqrt(ab_T).
  SampleRow row(Spec(SamplerKind::kDdim, 25, 0.0, 1.0, 0, 9), schedule, net->config(), torch::kCPU);
  const torch::Tensor x_T = row.x().clone();
  std::vector<SampleRow*> rows{&row};
  while (!row.done()) DenoiseStep(net, schedule, rows);
  EXPECT_TRUE(torch::allclose(row.x(), x_T / std::sqrt(schedule.alpha_bar(500)), 1e-4, 1e-5));
}

TEST(Sampler, DdimStepVarianceMatchesSigma) {
  // Many rows, one DDIM eta=1 step from t=500 with eps = 0: x_s - a x_t = sigma z.
  ContextUnet net = ZeroNoiseNet();
  NoiseSchedule schedule(ScheduleConfig{});
  std::vector<SampleRow> rows;
  for (int i = 0; i < 256; ++i) rows.emplace_back(Spec(SamplerKind::kDdim, 500, 1.0, 1.0, i, 100 + i), schedule, net->config(), torch::kCPU);
  std::vector<SampleRow*> ptrs;
  std::vector<torch::Tensor> before;
  for (auto& r : rows) {
    ptrs.push_back(&r);
    before.push_back(r.x().clone());
  }
  DenoiseStep(net, schedule, ptrs);
  const StepRule rule = ComputeStepRule(schedule, SamplerKind::kDdim, 1.0, 500, 499);
  std::vector<torch::Tensor> residual;
  for (size_t i = 0; i < rows.size(); ++i) residual.push_back(rows[i].x() - rule.a * before[i]);
  const torch::Tensor r = torch::stack(residual);
  const double var = r.var().item<double>();
  EXPECT_NEAR(var / (rule.sigma * rule.sigma), 1.0, 0.03);  // 196k samples: ~0.3% standard error
  EXPECT_NEAR(r.mean().item<double>(), 0.0, 0.01 * rule.sigma);
}

TEST(Sampler, DdimEtaZeroIsDeterministic) {
  ContextUnet net = RandomNet();
  NoiseSchedule schedule(ScheduleConfig{});
  std::vector<RowSpec> specs{Spec(SamplerKind::kDdim, 10, 0.0, 2.0, 1, 5), Spec(SamplerKind::kDdim, 10, 0.0, 2.0, 1, 6)};
  const torch::Tensor a = SampleAll(net, schedule, specs, torch::kCPU);
  const torch::Tensor b = SampleAll(net, schedule, specs, torch::kCPU);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::allclose(a[0], a[1])) << "different seeds must give different sprites";
}

// Rows at different positions, samplers, step counts and guidance, stepped together, equal the
// same rows stepped alone: the contract the daemon's iteration-level batching rests on.
TEST(Sampler, MixedTimestepBatchEqualsRowsRunAlone) {
  ContextUnet net = RandomNet();
  NoiseSchedule schedule(ScheduleConfig{});
  const std::vector<RowSpec> specs{
      Spec(SamplerKind::kDdpm, 500, 0.0, 1.0, 0, 11), Spec(SamplerKind::kDdim, 25, 0.0, 2.0, 1, 12),
      Spec(SamplerKind::kDdim, 10, 0.5, 3.0, 2, 13),  Spec(SamplerKind::kDdim, 50, 1.0, 0.0, 3, 14),
      Spec(SamplerKind::kDdpm, 100, 0.0, 1.5, 4, 15),
  };
  const std::vector<int> head_start{0, 3, 4, 1, 20};  // row 2 has 10 steps in all
  auto make = [&] {
    std::vector<SampleRow> rows;
    for (size_t i = 0; i < specs.size(); ++i) {
      rows.emplace_back(specs[i], schedule, net->config(), torch::kCPU);
      std::vector<SampleRow*> one{&rows.back()};
      for (int k = 0; k < head_start[i]; ++k) DenoiseStep(net, schedule, one);
    }
    return rows;
  };
  std::vector<SampleRow> together = make();
  std::vector<SampleRow> alone = make();
  std::vector<SampleRow*> all;
  for (auto& r : together) all.push_back(&r);
  for (int step = 0; step < 5; ++step) {
    DenoiseStep(net, schedule, all, /*want_x0=*/true);
    for (auto& r : alone) {
      std::vector<SampleRow*> one{&r};
      DenoiseStep(net, schedule, one, true);
    }
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(together[i].steps_done(), head_start[i] + 5);
    EXPECT_TRUE(torch::allclose(together[i].x(), alone[i].x(), 1e-4, 1e-5)) << "row " << i;
    EXPECT_TRUE(torch::allclose(together[i].x0_pred(), alone[i].x0_pred(), 1e-4, 1e-5)) << "row " << i;
  }
}



}  // namespace
}  // namespace spritediff
namespace spritediff {
namespace {

TEST(Sampler, SameSeedGivesSamePixelsAloneOrAmongSixteenStrangers) {
  ContextUnet net = RandomNet();
  NoiseSchedule schedule(ScheduleConfig{});
  const RowSpec mine = Spec(SamplerKind::kDdim, 25, 0.0, 2.0, 2, 7);
  const torch::Tensor alone = SampleAll(net, schedule, {mine}, torch::kCPU)[0];
  std::vector<RowSpec> crowd;
  for (int i = 0; i < 16; ++i) {
    crowd.push_back(Spec(i % 2 ? SamplerKind::kDdpm : SamplerKind::kDdim, 25 + i, 0.3, 1.0 + i % 3, i, 1000 + i));
    if (i == 9) crowd.push_back(mine);
  }
  const torch::Tensor batch = SampleAll(net, schedule, crowd, torch::kCPU);
  EXPECT_TRUE(torch::allclose(batch[10], alone, 1e-4, 1e-5));
  const Image a = TensorToImage(alone), b = TensorToImage(batch[10]);
  int differing = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) differing += std::abs(a.pixels[i] - b.pixels[i]) > 1;
  EXPECT_EQ(differing, 0);
}

TEST(Sampler, ValidationNamesTheField) {
  RowSpec s = Spec(SamplerKind::kDdim, 0, 0.0, 1.0, 0, 1);
  EXPECT_NE(ValidateRowSpec(s, 500, 5).message().find("steps"), std::string::npos);
  s.steps = 501;
  EXPECT_FALSE(ValidateRowSpec(s, 500, 5).ok());
  s.steps = 500;
  EXPECT_TRUE(ValidateRowSpec(s, 500, 5).ok());
  s.eta = 1.5;
  EXPECT_NE(ValidateRowSpec(s, 500, 5).message().find("eta"), std::string::npos);
  s.eta = 0;
  s.guidance = std::nan("");
  EXPECT_NE(ValidateRowSpec(s, 500, 5).message().find("guidance"), std::string::npos);
  s.guidance = 1;
  s.context.resize(4);
  EXPECT_NE(ValidateRowSpec(s, 500, 5).message().find("context"), std::string::npos);
}

TEST(Sampler, ContextFromLabelsMixesWeights) {
  const std::vector<std::string> labels{"hero", "non_hero", "food", "spell", "item"};
  Result<std::vector<float>> ctx = ContextFromLabels(labels, {{"hero", 1.0f}, {"food", 0.6f}});
  ASSERT_TRUE(ctx.ok());
  EXPECT_EQ(*ctx, (std::vector<float>{1.0f, 0.0f, 0.6f, 0.0f, 0.0f}));
  Result<std::vector<float>> bad = ContextFromLabels(labels, {{"dragon", 1.0f}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("dragon"), std::string::npos);
}

}  // namespace
}  // namespace spritediff
