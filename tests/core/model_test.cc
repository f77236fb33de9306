#include "core/model.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "core/checkpoint.h"

namespace spritediff {
namespace {

// The bundled model's BatchNorms carry real running statistics, so folding them is tested on
// the numbers that serving uses.
LoadedModel LoadBundled() {
  Result<LoadedModel> loaded = LoadModel(std::string(SPRITEDIFF_SOURCE_DIR) + "/models/sprites16");
  EXPECT_TRUE(loaded.ok()) << loaded.status().message();
  return std::move(loaded.value());
}

TEST(ModelTest, FoldedBatchNormPredictsWhatTheEvalNetworkPredicts) {
  LoadedModel plain = LoadBundled();
  LoadedModel fused = LoadBundled();
  fused.net->FuseBatchNormForInference();
  ASSERT_TRUE(fused.net->batchnorm_fused());

  torch::manual_seed(11);
  const int64_t n = 8;
  torch::Tensor x = torch::randn({n, 3, 16, 16});
  torch::Tensor t = torch::rand({n});
  torch::Tensor c = torch::zeros({n, 5});
  c.index_put_({torch::arange(n), torch::arange(n) % 5}, 1.0);
  torch::NoGradGuard no_grad;
  torch::Tensor expected = plain.net->forward(x, t, c);
  torch::Tensor got = fused.net->forward(x, t, c);
  // The noise prediction is O(1); folding only reorders float products.
  EXPECT_LT((expected - got).abs().max().item<double>(), 1e-4);
  EXPECT_GT(expected.abs().mean().item<double>(), 0.1);  // a real prediction, not zeros
}

TEST(ModelTest, FusingTwiceChangesNothing) {
  LoadedModel once = LoadBundled();
  LoadedModel twice = LoadBundled();
  once.net->FuseBatchNormForInference();
  twice.net->FuseBatchNormForInference();
  twice.net->FuseBatchNormForInference();
  auto a = once.net->parameters();
  auto b = twice.net->parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << i;
}

TEST(ModelTest, AFusedNetworkIsNeverSaved) {
  LoadedModel fused = LoadBundled();
  fused.net->FuseBatchNormForInference();
  const auto dir = std::filesystem::temp_directory_path() / ("spritediff_fused_" + std::to_string(::getpid()));
  Status s = SaveModel(dir.string(), fused.info, fused.net);
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition);
  EXPECT_FALSE(std::filesystem::exists(dir / "model.json"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace spritediff
