// The quality meter's judge: a small CNN that tells the classes of a sprite dataset apart,
// trained on a fixed per-class split of that dataset. Its penultimate layer gives the features
// that the Frechet distance and the precision/recall estimate compare (what Inception's pool
// features are for FID, at sprite scale). GroupNorm, not BatchNorm, so a sprite's features do
// not depend on what else is in the batch.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dataset.h"
#include "common/status.h"

namespace spritediff {

struct ClassifierConfig {
  int num_classes = 5;
  int channels = 3;       // 3: RGB composited onto black; 4: premultiplied RGBA (core/dataset.h)
  int height = 16;        // square input, a multiple of 4
  int width = 32;         // channels of the first stage; 2x and 4x in the next two
  int feature_dim = 128;  // the penultimate (feature) layer

  Status Validate() const;
};

// conv stages [w, 2w, 4w] (two 3x3 convs + GroupNorm + SiLU each, average-pooled between
// stages), global average pool, Linear -> SiLU (the features), Linear (the logits).
class SpriteClassifierImpl : public torch::nn::Module {
 public:
  explicit SpriteClassifierImpl(const ClassifierConfig& config);

  // x: [B, channels, H, W] in [-1, 1]. Returns [B, feature_dim].
  torch::Tensor features(const torch::Tensor& x);
  // Returns the logits [B, num_classes].
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor logits_from_features(const torch::Tensor& f) { return head_->forward(f); }

  const ClassifierConfig& config() const { return config_; }

 private:
  ClassifierConfig config_;
  torch::nn::Sequential body_{nullptr};
  torch::nn::Sequential feature_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(SpriteClassifier);

// Row indices of a dataset split per class: of each class's n images (in the dataset's order),
// a seeded shuffle puts round(fraction * n) of them (at least 1 when n >= 2) in held_out.
// Both lists are sorted ascending.
struct DataSplit {
  std::vector<int64_t> train;
  std::vector<int64_t> held_out;
};
DataSplit SplitPerClass(const torch::Tensor& class_ids, int64_t num_classes, double held_out_fraction, uint64_t seed);

struct ClassifierTraining {
  int epochs = 100;  // 100: held-out accuracy 0.875 on the DCSS sprites at 16px (30: 0.718, both measured)
  int batch_size = 64;
  double lr = 2e-3;         // Adam, cosine decay to 0
  double weight_decay = 1e-4;
  uint64_t seed = 1;
  bool flip = true;         // random horizontal flips
  // Cross-entropy class weights proportional to n_c^-balance (0 = plain, 0.5 = sqrt balance,
  // 1 = every class weighs the same). 1: at 0.5 a 12-epoch judge never predicted food, which
  // has 22 training sprites against non_hero's 910 in the DCSS set.
  double balance = 1.0;
};

// Trains a classifier on images[train] with labels class_ids[train]; `log` (optional) gets one
// line per epoch. Deterministic for a given seed on one machine and thread count.
SpriteClassifier TrainClassifier(const ClassifierConfig& config, const ClassifierTraining& training,
                                 const torch::Tensor& images, const torch::Tensor& class_ids,
                                 const std::vector<int64_t>& train, const std::function<void(const std::string&)>& log);

// Features and predicted classes of images [N, 3, H, W], in eval mode, in chunks.
struct ClassifierOutput {
  torch::Tensor features;   // [N, feature_dim] float32
  torch::Tensor predicted;  // [N] int64
};
ClassifierOutput RunClassifier(SpriteClassifier& net, const torch::Tensor& images, int64_t chunk = 256);

}  // namespace spritediff
