#include "core/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "core/dataset.h"

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
      Spec(SamplerKind::kDpmpp2m, 12, 0.0, 2.0, 0, 16),  Spec(SamplerKind::kDpmpp2mSde, 15, 1.0, 2.0, 1, 17),
      Spec(SamplerKind::kDpmpp2mSde, 10, 0.5, 1.0, 2, 18), Spec(SamplerKind::kDpmpp2m, 8, 0.0, 3.0, 3, 19),
  };
  // Rows 5-8 (DPM-Solver++) start with no history, one step of history, several steps, and
  // finish their last (first-order, s = 0) step inside the shared steps (row 8: 3 + 5 = 8).
  const std::vector<int> head_start{0, 3, 4, 1, 20, 0, 1, 4, 3};  // row 2 has 10 steps in all
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
    EXPECT_EQ(together[i].steps_done(), std::min(head_start[i] + 5, together[i].steps_total())) << "row " << i;
    EXPECT_TRUE(torch::allclose(together[i].x(), alone[i].x(), 1e-4, 1e-5)) << "row " << i;
    EXPECT_TRUE(torch::allclose(together[i].x0_pred(), alone[i].x0_pred(), 1e-4, 1e-5)) << "row " << i;
  }
}

// The guidance interval: w applies at steps from t in (low T, high T] only.
TEST(Sampler, GuidanceIntervalPicksTheStepsThatAreGuided) {
  RowSpec spec = Spec(SamplerKind::kDdim, 25, 0.0, 3.0, 1, 1);
  spec.guidance_low = 0.2;
  spec.guidance_high = 0.6;
  EXPECT_EQ(GuidanceAt(spec, 500, 500), 1.0);
  EXPECT_EQ(GuidanceAt(spec, 301, 500), 1.0);
  EXPECT_EQ(GuidanceAt(spec, 300, 500), 3.0);  // high T itself is inside
  EXPECT_EQ(GuidanceAt(spec, 101, 500), 3.0);
  EXPECT_EQ(GuidanceAt(spec, 100, 500), 1.0);  // low T itself is outside
  spec.guidance_low = 0.0;
  spec.guidance_high = 1.0;
  for (int t : {1, 250, 500}) EXPECT_EQ(GuidanceAt(spec, t, 500), 3.0);
  // Validation names the field.
  for (auto [low, high] : std::vector<std::pair<double, double>>{{0.5, 0.5}, {-0.1, 1.0}, {0.0, 1.5}, {0.7, 0.2}}) {
    spec.guidance_low = low;
    spec.guidance_high = high;
    Status s = ValidateRowSpec(spec, 500, 5);
    ASSERT_FALSE(s.ok()) << low << " " << high;
    EXPECT_EQ(s.message().rfind("guidance_interval", 0), 0u) << s.message();
  }
}

// A guided row whose interval holds none of its steps is the unguided row, pixel for pixel; one
// whose interval holds all of them is the plain guided row; a partial interval is neither, and
// rows with intervals still step together exactly as alone.
TEST(Sampler, GuidanceIntervalOutsideEveryStepIsTheConditionalRow) {
  ContextUnet net = RandomNet();
  NoiseSchedule schedule(ScheduleConfig{});
  const RowSpec plain = Spec(SamplerKind::kDdim, 10, 1.0, 3.0, 2, 9);
  RowSpec unguided = plain;
  unguided.guidance = 1.0;
  RowSpec never = plain;  // steps run from t = 500 down to t = 50: none at or below t = 5
  never.guidance_high = 0.01;
  RowSpec late = plain;  // guided only below t = 250
  late.guidance_high = 0.5;
  const torch::Tensor x = SampleAll(net, schedule, {plain, unguided, never, late}, torch::kCPU);
  EXPECT_TRUE(torch::allclose(x[2], x[1], 1e-5, 1e-6));
  EXPECT_FALSE(torch::allclose(x[3], x[0]));
  EXPECT_FALSE(torch::allclose(x[3], x[1]));
  const torch::Tensor alone = SampleAll(net, schedule, {late}, torch::kCPU);
  EXPECT_TRUE(torch::allclose(alone[0], x[3], 1e-4, 1e-5));
  const torch::Tensor everywhere = SampleAll(net, schedule, {plain}, torch::kCPU);
  EXPECT_TRUE(torch::allclose(everywhere[0], x[0], 1e-4, 1e-5));
}

// ---- DPM-Solver++(2M) and its SDE variant -------------------------------------------------

struct Vp {  // alpha_t, sigma_t, lambda_t of the schedule at t, computed here from alpha_bar
  double alpha, sigma, lambda;
};
Vp VpAt(const NoiseSchedule& s, int t) {
  const double alpha = std::sqrt(s.alpha_bar(t)), sigma = std::sqrt(1.0 - s.alpha_bar(t));
  return {alpha, sigma, std::log(alpha) - std::log(sigma)};
}

TEST(StepRule, DpmSolverFirstOrderStepIsDdimEtaZero) {
  NoiseSchedule s(ScheduleConfig{});
  const std::vector<std::pair<int, int>> steps{{500, 480}, {500, 450}, {300, 250}, {40, 20}, {20, 0}, {1, 0}};
  for (auto [t, u] : steps) {
    const StepRule ddim = ComputeStepRule(s, SamplerKind::kDdim, 0.0, t, u);
    for (SamplerKind k : {SamplerKind::kDpmpp2m, SamplerKind::kDpmpp2mSde}) {
      const StepRule dpm = ComputeStepRule(s, k, 0.0, t, u, /*prev_t=*/-1);
      EXPECT_NEAR(dpm.a, ddim.a, 1e-9 * std::max(1.0, std::fabs(ddim.a))) << SamplerName(k) << " t=" << t << " s=" << u;
      EXPECT_NEAR(dpm.b, ddim.b, 1e-9 * std::max(1.0, std::fabs(ddim.b))) << SamplerName(k) << " t=" << t;
      EXPECT_EQ(dpm.c, 0.0);
      EXPECT_EQ(dpm.sigma, 0.0);
    }
    // 2M ignores eta.
    const StepRule ignored = ComputeStepRule(s, SamplerKind::kDpmpp2m, 1.0, t, u, -1);
    EXPECT_NEAR(ignored.a, ddim.a, 1e-9 * std::max(1.0, std::fabs(ddim.a)));
    EXPECT_EQ(ignored.sigma, 0.0);
  }
}

// The paper's form, evaluated through lambda = log(alpha) - log(sigma) and exponentials of h:
// x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D, D = (1 + 1/2r) x0_t - 1/2r x0_prev.
// Matching coefficients on x_t (directly and through x0_t), eps (through x0_t) and x0_prev.
TEST(StepRule, DpmSolver2mSecondOrderMatchesThePaper) {
  NoiseSchedule s(ScheduleConfig{});
  for (auto [p, t, u] : std::vector<std::tuple<int, int, int>>{{500, 450, 400}, {100, 60, 20}, {500, 467, 433}, {40, 20, 10}}) {
    const Vp P = VpAt(s, p), V = VpAt(s, t), U = VpAt(s, u);
    const double h = U.lambda - V.lambda, r = (V.lambda - P.lambda) / h;
    const double k = -U.alpha * (std::exp(-h) - 1.0);
    const double d_cur = 1.0 + 1.0 / (2.0 * r), d_prev = -1.0 / (2.0 * r);
    // x0_t = x_t / alpha_t - sigma_t / alpha_t eps
    const double want_a = U.sigma / V.sigma + k * d_cur / V.alpha;
    const double want_b = -k * d_cur * V.sigma / V.alpha;
    const double want_c = k * d_prev;
    const StepRule rule = ComputeStepRule(s, SamplerKind::kDpmpp2m, 0.0, t, u, p);
    EXPECT_NEAR(rule.a, want_a, 1e-9 * std::fabs(want_a)) << "t=" << t;
    EXPECT_NEAR(rule.b, want_b, 1e-9 * std::fabs(want_b)) << "t=" << t;
    EXPECT_NEAR(rule.c, want_c, 1e-9 * std::fabs(want_c)) << "t=" << t;
    EXPECT_EQ(rule.sigma, 0.0);
    // (At r = 1, equal lambda steps, d_cur and d_prev are the textbook 1.5 and -0.5; integer
    // timesteps never give r = 1 exactly, so the general r is what is checked here.)
    // An exact, constant data prediction is transported exactly: with x_t = alpha_t x0 +
    // sigma_t eps and x0_prev = x0, the step lands on alpha_s x0 + sigma_s eps.
    EXPECT_NEAR(rule.a * V.alpha + rule.c, U.alpha, 1e-9);
    EXPECT_NEAR(rule.a * V.sigma + rule.b, U.sigma, 1e-9);
  }
  // The last step, to s = 0, is first order whatever the history: x_0 = x0_t.
  const StepRule last = ComputeStepRule(s, SamplerKind::kDpmpp2m, 0.0, 20, 0, 40);
  EXPECT_NEAR(last.a, 1.0 / VpAt(s, 20).alpha, 1e-12);
  EXPECT_NEAR(last.b, -VpAt(s, 20).sigma / VpAt(s, 20).alpha, 1e-12);
  EXPECT_EQ(last.c, 0.0);
  EXPECT_EQ(last.sigma, 0.0);
}

// SDE-DPM-Solver++(2M), eta = 1: x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) D
// + sigma_s sqrt(1 - e^{-2h}) z; it keeps the forward marginals for an exact x0.
TEST(StepRule, DpmSolver2mSdeMatchesThePaperAndKeepsTheMarginals) {
  NoiseSchedule s(ScheduleConfig{});
  for (double eta : {1.0, 0.5}) {
    for (auto [p, t, u] : std::vector<std::tuple<int, int, int>>{{-1, 500, 450}, {500, 450, 400}, {100, 60, 20}}) {
      const Vp V = VpAt(s, t), U = VpAt(s, u);
      const double h = U.lambda - V.lambda;
      const double w = p < 0 ? 0.0 : 1.0 / (2.0 * (V.lambda - VpAt(s, p).lambda) / h);
      const double k = U.alpha * (1.0 - std::exp(-(1.0 + eta) * h));
      const StepRule rule = ComputeStepRule(s, SamplerKind::kDpmpp2mSde, eta, t, u, p);
      EXPECT_NEAR(rule.a, U.sigma / V.sigma * std::exp(-eta * h) + k * (1 + w) / V.alpha, 1e-9) << "t=" << t;
      EXPECT_NEAR(rule.b, -k * (1 + w) * V.sigma / V.alpha, 1e-9) << "t=" << t;
      EXPECT_NEAR(rule.c, -k * w, 1e-9) << "t=" << t;
      EXPECT_NEAR(rule.sigma * rule.sigma, U.sigma * U.sigma * (1.0 - std::exp(-2.0 * eta * h)), 1e-12);
      // x_t = alpha_t x0 + sigma_t eps with the true eps: mean alpha_s x0, and the eps part plus
      // the fresh noise have variance sigma_s^2.
      EXPECT_NEAR(rule.a * V.alpha + rule.c, U.alpha, 1e-9);
      const double eps_part = rule.a * V.sigma + rule.b;
      EXPECT_NEAR(eps_part * eps_part + rule.sigma * rule.sigma, U.sigma * U.sigma, 1e-9);
    }
  }
}

TEST(Sampler, DpmSolverSdeStepVarianceMatchesSigma) {
  // Many rows, one first-order SDE step from t=500 to 450 with eps = 0: x_s - a x_t = sigma z.
  ContextUnet net = ZeroNoiseNet();
  NoiseSchedule schedule(ScheduleConfig{});
  std::vector<SampleRow> rows;
  for (int i = 0; i < 256; ++i) {
    rows.emplace_back(Spec(SamplerKind::kDpmpp2mSde, 10, 1.0, 1.0, i, 300 + i), schedule, net->config(), torch::kCPU);
  }
  std::vector<SampleRow*> ptrs;
  std::vector<torch::Tensor> before;
  for (auto& r : rows) {
    ptrs.push_back(&r);
    before.push_back(r.x().clone());
  }
  DenoiseStep(net, schedule, ptrs);
  const StepRule rule = ComputeStepRule(schedule, SamplerKind::kDpmpp2mSde, 1.0, 500, 450);
  ASSERT_GT(rule.sigma, 0.1);
  std::vector<torch::Tensor> residual;
  for (size_t i = 0; i < rows.size(); ++i) residual.push_back(rows[i].x() - rule.a * before[i]);
  const torch::Tensor r = torch::stack(residual);
  // 196,608 draws: the sample variance's relative standard error is sqrt(2/N) = 0.32%; 3% is ~9 SE.
  EXPECT_NEAR(r.var().item<double>() / (rule.sigma * rule.sigma), 1.0, 0.03);
  EXPECT_NEAR(r.mean().item<double>(), 0.0, 0.01 * rule.sigma);
}

TEST(Sampler, DpmSolverWithZeroNoisePredictorFollowsTheClosedForm) {
  // eps = 0 makes every x0 prediction x_t / alpha_t; DDIM eta=0 keeps it constant, so the
  // first-order step and then every 2M correction (D = x0 when x0_prev = x0) end at x_T / alpha_T.
  ContextUnet net = ZeroNoiseNet();
  NoiseSchedule schedule(ScheduleConfig{});
  SampleRow row(Spec(SamplerKind::kDpmpp2m, 10, 0.0, 1.0, 0, 9), schedule, net->config(), torch::kCPU);
  const torch::Tensor x_T = row.x().clone();
  std::vector<SampleRow*> rows{&row};
  while (!row.done()) DenoiseStep(net, schedule, rows);
  EXPECT_TRUE(torch::allclose(row.x(), x_T / std::sqrt(schedule.alpha_bar(500)), 1e-4, 1e-5));
}

TEST(Sampler, DpmSolver2mIsDeterministicAndSdeIsSeeded) {
  ContextUnet net = RandomNet();
  NoiseSchedule schedule(ScheduleConfig{});
  for (SamplerKind k : {SamplerKind::kDpmpp2m, SamplerKind::kDpmpp2mSde}) {
    std::vector<RowSpec> specs{Spec(k, 6, 1.0, 2.0, 1, 5), Spec(k, 6, 1.0, 2.0, 1, 6)};
    const torch::Tensor a = SampleAll(net, schedule, specs, torch::kCPU);
    const torch::Tensor b = SampleAll(net, schedule, specs, torch::kCPU);
    EXPECT_TRUE(torch::equal(a, b)) << SamplerName(k);
    EXPECT_FALSE(torch::allclose(a[0], a[1])) << SamplerName(k);
    EXPECT_TRUE(torch::isfinite(a).all().item<bool>()) << SamplerName(k);
  }
}

TEST(Sampler, SamplerNamesRoundTrip) {
  for (SamplerKind k : {SamplerKind::kDdpm, SamplerKind::kDdim, SamplerKind::kDpmpp2m, SamplerKind::kDpmpp2mSde}) {
    SamplerKind parsed = SamplerKind::kDdpm;
    ASSERT_TRUE(ParseSamplerName(SamplerName(k), &parsed)) << SamplerName(k);
    EXPECT_EQ(parsed, k);
    EXPECT_NE(SamplerNames().find(SamplerName(k)), std::string::npos);
  }
  SamplerKind unused;
  EXPECT_FALSE(ParseSamplerName("euler", &unused));
  EXPECT_TRUE(SamplerUsesEta(SamplerKind::kDpmpp2mSde));
  EXPECT_FALSE(SamplerUsesEta(SamplerKind::kDpmpp2m));
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
  s.sampler = SamplerKind::kDpmpp2mSde;
  s.eta = -0.5;
  EXPECT_NE(ValidateRowSpec(s, 500, 5).message().find("eta"), std::string::npos);
  s.eta = 1;
  EXPECT_TRUE(ValidateRowSpec(s, 500, 5).ok());
  s.sampler = static_cast<SamplerKind>(9);
  EXPECT_NE(ValidateRowSpec(s, 500, 5).message().find("sampler"), std::string::npos);
  s.sampler = SamplerKind::kDpmpp2m;
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

namespace spritediff {
namespace {

// A real sprite with binary alpha survives premultiplied RGBA -> TensorToImage exactly: opaque
// pixels keep their colour, transparent ones become (0, 0, 0, 0).
TEST(AlphaFinish, BinaryAlphaRoundTripsRealSprites) {
  Result<Dataset> ds = LoadDataset(SPRITEDIFF_DATA_DIR, 32, 4);
  ASSERT_TRUE(ds.ok());
  int checked = 0;
  for (int64_t i = 0; i < ds->size() && checked < 20; i += 37) {
    const torch::Tensor alpha = ds->images[i][3];
    if (alpha.gt(-1.0f).logical_and(alpha.lt(1.0f)).any().item<bool>()) continue;  // soft-edged sprite
    const Image back = TensorToImage(ds->images[i], AlphaMode::kBinary);
    ASSERT_EQ(back.channels, 4);
    const torch::Tensor u8 = ds->images[i].add(1).mul(127.5).round().to(torch::kUInt8).permute({1, 2, 0}).contiguous();
    for (size_t p = 0; p < back.pixels.size(); p += 4) {
      const uint8_t* want = u8.data_ptr<uint8_t>() + p;
      ASSERT_EQ(back.pixels[p + 3], want[3]);
      for (int c = 0; c < 3; ++c) ASSERT_EQ(back.pixels[p + c], want[3] == 0 ? 0 : want[c]);
    }
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

TEST(AlphaFinish, BinaryLeavesNoPartialAlphaAndSoftKeepsIt) {
  torch::manual_seed(3);
  const torch::Tensor x = torch::rand({4, 8, 8}).mul(2).sub(1);
  const Image binary = TensorToImage(x, AlphaMode::kBinary);
  const Image soft = TensorToImage(x, AlphaMode::kSoft);
  int partial = 0;
  for (size_t p = 3; p < binary.pixels.size(); p += 4) {
    ASSERT_TRUE(binary.pixels[p] == 0 || binary.pixels[p] == 255);
    partial += soft.pixels[p] != 0 && soft.pixels[p] != 255;
    // Un-premultiplied: colour = premultiplied / alpha, so opaque binary pixels of a half-alpha
    // prediction are brighter than its premultiplied colour.
    if (binary.pixels[p] == 0) {
      for (int c = 1; c <= 3; ++c) ASSERT_EQ(binary.pixels[p - c], 0);
    }
  }
  EXPECT_GT(partial, 40);
  // Premultiplied colour 0.25 at alpha 0.5 is colour 0.5 (128) in both modes.
  torch::Tensor one = torch::tensor({-0.5f, -0.5f, -0.5f, 0.0f}).view({4, 1, 1});
  EXPECT_EQ(TensorToImage(one, AlphaMode::kBinary).pixels, (std::vector<uint8_t>{128, 128, 128, 255}));
  EXPECT_EQ(TensorToImage(one, AlphaMode::kSoft).pixels, (std::vector<uint8_t>{128, 128, 128, 128}));
  // Three channels are unchanged by the mode.
  EXPECT_EQ(TensorToImage(x.slice(0, 0, 3), AlphaMode::kSoft).pixels, TensorToImage(x.slice(0, 0, 3)).pixels);
}

}  // namespace
}  // namespace spritediff
