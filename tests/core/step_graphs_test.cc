// StepGraphs on the CPU: the bucketed, padded step (what a CUDA graph replays) against the eager
// step, row for row. On a CPU the class computes the bucketed step without capturing, so these
// tests check the buffers, padding, guidance mix and the update; the capture itself needs a GPU
// (scripts/gpu-check.sh).
#include <gtest/gtest.h>

#include "core/sampler.h"
#include "core/step_graphs.h"

namespace spritediff {
namespace {

ContextUnet SmallNet() {
  torch::manual_seed(3);
  ModelConfig arch;
  arch.n_feat = 16;
  arch.height = 16;
  ContextUnet net(arch);
  net->eval();
  return net;
}

std::vector<RowSpec> MixedRows(int n, int n_cfeat) {
  const SamplerKind kinds[] = {SamplerKind::kDdim, SamplerKind::kDdpm, SamplerKind::kDpmpp2m,
                               SamplerKind::kDpmpp2mSde};
  std::vector<RowSpec> specs(n);
  for (int i = 0; i < n; ++i) {
    specs[i].sampler = kinds[i % 4];
    specs[i].steps = 6 + i % 3;  // rows finish at different steps: the batch shrinks
    specs[i].eta = (i % 2 == 0) ? 1.0 : 0.0;
    specs[i].guidance = (i % 3 == 0) ? 1.0 : 2.5;
    specs[i].context.assign(n_cfeat, 0.0f);
    specs[i].context[i % n_cfeat] = 1.0f;
    specs[i].seed = 100 + i;
  }
  return specs;
}

TEST(StepGraphsTest, BucketsArePowersOfTwoUpToMaxRows) {
  StepGraphs graphs(SmallNet(), torch::kCPU, 50);
  EXPECT_EQ(graphs.BucketFor(0), 0);
  EXPECT_EQ(graphs.BucketFor(1), 1);
  EXPECT_EQ(graphs.BucketFor(3), 4);
  EXPECT_EQ(graphs.BucketFor(33), 64);
  EXPECT_EQ(graphs.BucketFor(64), 64);
  EXPECT_EQ(graphs.BucketFor(65), 0);
  EXPECT_FALSE(graphs.captures());  // a CPU device never captures
}

TEST(StepGraphsTest, BucketedStepMatchesEagerRowForRow) {
  ContextUnet net = SmallNet();
  const NoiseSchedule schedule(ScheduleConfig{});
  StepGraphs graphs(net, torch::kCPU, 8);
  // 5 rows pad to 8; then 3 rows through the same buffers, whose padding holds the first run's rows.
  for (int n : {5, 3}) {
    const std::vector<RowSpec> specs = MixedRows(n, net->config().n_cfeat);
    const torch::Tensor eager = SampleAll(net, schedule, specs, torch::kCPU);
    const torch::Tensor bucketed = SampleAll(net, schedule, specs, torch::kCPU, &graphs);
    ASSERT_EQ(eager.sizes(), bucketed.sizes());
    EXPECT_LT((eager - bucketed).abs().max().item<double>(), 1e-4) << n << " rows";
    EXPECT_GT(eager.abs().max().item<double>(), 0.1);  // real samples, not zeros
  }
}

TEST(StepGraphsTest, UnguidedRowsKeepTheConditionalPrediction) {
  // w = 1 must give eps_c itself, not eps_u + 1 * (eps_c - eps_u) (rounding).
  const torch::Tensor eps_c = torch::randn({4, 3, 2, 2});
  const torch::Tensor eps_u = torch::randn({4, 3, 2, 2}) * 1e6;
  const torch::Tensor w = torch::tensor({1.0f, 2.0f, 1.0f, 0.5f}).view({-1, 1, 1, 1});
  const torch::Tensor mixed = GuidedEps(eps_c, eps_u, w);
  EXPECT_TRUE(torch::equal(mixed[0], eps_c[0]));
  EXPECT_TRUE(torch::equal(mixed[2], eps_c[2]));
  EXPECT_TRUE(torch::allclose(mixed[1], eps_u[1] + 2.0f * (eps_c[1] - eps_u[1])));
}

TEST(StepGraphsTest, RowsPastTheLargestBucketRunEagerly) {
  ContextUnet net = SmallNet();
  const NoiseSchedule schedule(ScheduleConfig{});
  StepGraphs graphs(net, torch::kCPU, 2);
  const std::vector<RowSpec> specs = MixedRows(3, net->config().n_cfeat);
  const torch::Tensor eager = SampleAll(net, schedule, specs, torch::kCPU);
  const torch::Tensor through = SampleAll(net, schedule, specs, torch::kCPU, &graphs);
  // 3 rows exceed the 2-row bucket until one finishes; every step is still exact.
  EXPECT_LT((eager - through).abs().max().item<double>(), 1e-4);
}

}  // namespace
}  // namespace spritediff
