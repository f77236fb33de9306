#include "core/model.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "core/checkpoint.h"
#include "core/runtime.h"

namespace spritediff {
namespace {

// The bundled model's BatchNorms carry real running statistics, so folding them is tested on
// the numbers that serving uses.
LoadedModel LoadBundled() {
  Result<LoadedModel> loaded = LoadModel(std::string(SPRITEDIFF_SOURCE_DIR) + "/models/sprites16");
  EXPECT_TRUE(loaded.ok()) << loaded.status().message();
  return std::move(loaded.value());
}

// n noisy 16x16 inputs with times in [0, 1] and one-hot labels in turn, from a fixed seed.
struct Inputs {
  torch::Tensor x, t, c;
};
Inputs RandomInputs(uint64_t seed, int64_t n) {
  torch::manual_seed(seed);
  Inputs in{torch::randn({n, 3, 16, 16}), torch::rand({n}), torch::zeros({n, 5})};
  in.c.index_put_({torch::arange(n), torch::arange(n) % 5}, 1.0);
  return in;
}

TEST(ModelTest, FoldedBatchNormPredictsWhatTheEvalNetworkPredicts) {
  LoadedModel plain = LoadBundled();
  LoadedModel fused = LoadBundled();
  fused.net->FuseBatchNormForInference();
  ASSERT_TRUE(fused.net->batchnorm_fused());

  const auto [x, t, c] = RandomInputs(11, 8);
  torch::NoGradGuard no_grad;
  torch::Tensor expected = plain.net->forward(x, t, c);
  torch::Tensor got = fused.net->forward(x, t, c);
  // The noise prediction is O(1); folding only reorders float products.
  EXPECT_LT((expected - got).abs().max().item<double>(), 1e-4);
  EXPECT_GT(expected.abs().mean().item<double>(), 0.1);  // a real prediction, not zeros
}

// Channels-last (serving on a GPU) changes the layout of weights and activations, not the
// function. Checked on the CPU, where the same layers take either layout.
TEST(ModelTest, ChannelsLastNetworkPredictsWhatTheNchwNetworkPredicts) {
  LoadedModel plain = LoadBundled();
  LoadedModel nhwc = LoadBundled();
  nhwc.net->FuseBatchNormForInference();
  nhwc.net->UseChannelsLastForInference();
  nhwc.net->UseChannelsLastForInference();  // a second call changes nothing
  ASSERT_TRUE(nhwc.net->channels_last());
  int converted = 0;
  for (const torch::Tensor& p : nhwc.net->parameters()) {
    if (p.dim() != 4) continue;
    EXPECT_TRUE(p.is_contiguous(torch::MemoryFormat::ChannelsLast));
    ++converted;
  }
  EXPECT_GE(converted, 15);  // every convolution's weight

  const auto [x, t, c] = RandomInputs(12, 8);
  torch::NoGradGuard no_grad;
  torch::Tensor expected = plain.net->forward(x, t, c);
  torch::Tensor got = nhwc.net->forward(x, t, c);
  EXPECT_EQ(got.sizes(), expected.sizes());
  EXPECT_LT((expected - got).abs().max().item<double>(), 1e-4);
  EXPECT_GT(expected.abs().mean().item<double>(), 0.1);
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

// bf16 inference (config precision): the bundled model's noise prediction in bf16 stays close to
// fp32 (bf16 keeps 8 bits of mantissa, so about 1% of the prediction's size), comes back as
// float32, keeps the transposed convolutions and embeddings in float32, and is never saved.
TEST(ModelTest, BFloat16NetworkPredictsCloseToFloat32) {
  LoadedModel plain = LoadBundled();
  LoadedModel half = LoadBundled();
  half.net->FuseBatchNormForInference();
  half.net->UseBFloat16ForInference();
  ASSERT_TRUE(half.net->bfloat16());
  int bf16_params = 0, fp32_params = 0;
  for (const auto& named : half.net->named_parameters()) {
    const bool is_bf16 = named.value().scalar_type() == torch::kBFloat16;
    (is_bf16 ? bf16_params : fp32_params) += 1;
    if (named.key().find("embed") != std::string::npos) EXPECT_FALSE(is_bf16) << named.key();
  }
  EXPECT_GT(bf16_params, 20);
  EXPECT_GT(fp32_params, 0);
  for (const auto& module : half.net->modules(false)) {
    if (auto* convt = module->as<torch::nn::ConvTranspose2dImpl>()) {
      EXPECT_EQ(convt->weight.scalar_type(), torch::kFloat32);
    }
  }

  const auto [x, t, c] = RandomInputs(12, 16);
  torch::NoGradGuard no_grad;
  torch::Tensor expected = plain.net->forward(x, t, c);
  torch::Tensor got = half.net->forward(x, t, c);
  ASSERT_EQ(got.scalar_type(), torch::kFloat32);
  ASSERT_EQ(got.sizes(), expected.sizes());
  const double scale = expected.abs().mean().item<double>();
  EXPECT_GT(scale, 0.1);
  EXPECT_LT((expected - got).abs().mean().item<double>(), 0.03 * scale);
  EXPECT_LT((expected - got).abs().max().item<double>(), 0.5 * scale);
  EXPECT_FALSE(torch::equal(expected, got)) << "the bf16 network must really run in bf16";

  const auto dir = std::filesystem::temp_directory_path() / ("spritediff_bf16_" + std::to_string(::getpid()));
  LoadedModel unfused = LoadBundled();
  unfused.net->UseBFloat16ForInference();
  EXPECT_EQ(SaveModel(dir.string(), unfused.info, unfused.net).code(), Status::Code::kFailedPrecondition);
  EXPECT_FALSE(std::filesystem::exists(dir / "model.json"));
  std::filesystem::remove_all(dir);
}

// Mixed precision must give the float32 weights gradients close to float32's own, through the
// casts, and must be a switch: off again, the network computes exactly what float32 computes.
TEST(ModelTest, BFloat16ConvolutionsTrainTheFloat32Weights) {
  LoadedModel plain = LoadBundled();
  LoadedModel mixed = LoadBundled();
  plain.net->train();
  mixed.net->train();
  mixed.net->UseBFloat16Convolutions(true);
  ASSERT_TRUE(mixed.net->bfloat16_convolutions());
  const auto [x, t, c] = RandomInputs(13, 32);
  const torch::Tensor noise = torch::randn_like(x);
  torch::mse_loss(plain.net->forward(x, t, c), noise).backward();
  torch::Tensor out = mixed.net->forward(x, t, c);
  ASSERT_EQ(out.scalar_type(), torch::kFloat32);
  torch::mse_loss(out, noise).backward();
  {
    torch::NoGradGuard no_grad;
    EXPECT_GT((out - plain.net->forward(x, t, c)).abs().max().item<double>(), 1e-4)
        << "the mixed network must really compute in bf16";
  }

  auto expected = plain.net->named_parameters();
  int compared = 0;
  double worst_cosine = 1;
  for (const auto& p : mixed.net->named_parameters()) {
    ASSERT_EQ(p.value().scalar_type(), torch::kFloat32) << p.key();
    const torch::Tensor& g = p.value().grad();
    const torch::Tensor& e = expected[p.key()].grad();
    ASSERT_TRUE(g.defined() && e.defined()) << p.key();
    ASSERT_EQ(g.scalar_type(), torch::kFloat32) << p.key();
    if (e.norm().item<double>() < 1e-6) continue;
    const double cosine = (g * e).sum().item<double>() / (g.norm() * e.norm()).item<double>();
    worst_cosine = std::min(worst_cosine, cosine);
    EXPECT_GT(cosine, 0.95) << p.key();
    EXPECT_NEAR(g.norm().item<double>() / e.norm().item<double>(), 1.0, 0.1) << p.key();
    ++compared;
  }
  EXPECT_GT(compared, 40);
  EXPECT_GT(worst_cosine, 0.95);

  mixed.net->UseBFloat16Convolutions(false);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(mixed.net->forward(x, t, c), plain.net->forward(x, t, c)));
}

TEST(ModelTest, PrecisionNamesResolve) {
  EXPECT_FALSE(*ResolveBFloat16("fp32", "cpu"));
  EXPECT_TRUE(*ResolveBFloat16("bf16", "cpu"));
  EXPECT_EQ(*ResolveBFloat16("auto", "cpu"), CpuHasNativeBFloat16());
  EXPECT_FALSE(*ResolveBFloat16("auto", "cuda:0"));
  Result<bool> bad = ResolveBFloat16("fp8", "cpu");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("precision"), std::string::npos);

  EXPECT_TRUE(*ResolveFoldBatchNorm("true", "cpu"));
  EXPECT_FALSE(*ResolveFoldBatchNorm("false", "cuda:0"));
  EXPECT_FALSE(*ResolveFoldBatchNorm("auto", "cpu"));
  EXPECT_TRUE(*ResolveFoldBatchNorm("auto", "cuda:0"));
  Result<bool> bad_fold = ResolveFoldBatchNorm("maybe", "cpu");
  ASSERT_FALSE(bad_fold.ok());
  EXPECT_NE(bad_fold.status().message().find("fold_batchnorm"), std::string::npos);
}

// Inference runs each transposed convolution (kernel = stride) as one matrix product; with
// gradients on (training) the network uses libtorch's own kernel. Both give the same forward.
TEST(ModelTest, TransposedConvolutionsAsMatrixProductsMatchLibtorch) {
  LoadedModel model = LoadBundled();
  const auto [x, t, c] = RandomInputs(13, 6);
  torch::Tensor with_kernel = model.net->forward(x, t, c).detach();  // grad mode on: libtorch's kernel
  torch::Tensor as_product, again;
  {
    torch::NoGradGuard no_grad;
    as_product = model.net->forward(x, t, c);
    again = model.net->forward(x, t, c);
  }
  EXPECT_GT(with_kernel.abs().mean().item<double>(), 0.1);
  EXPECT_LT((with_kernel - as_product).abs().max().item<double>(), 1e-4);
  EXPECT_TRUE(torch::equal(as_product, again)) << "inference must be deterministic";
}

}  // namespace
}  // namespace spritediff
