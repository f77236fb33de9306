// The project's quality meter: judges sprites (generated, or any set of images) against a
// dataset with a classifier trained on a fixed per-class split of it (core/classifier.h), and
// reports per class first, because a pooled figure hides the class that fails. For images meant
// to show class c:
//   accuracy       the fraction the classifier assigns to c;
//   frechet_ratio  how far their classifier features lie from the real sprites of c, relative
//                  to unseen real sprites: with T_c the training-split features of c and H_c
//                  the m_c held-out ones (which the classifier never saw, like generated ones),
//                  frechet = mean over subsets of m_c generated sprites of FD(subset, T_c),
//                  frechet_real = FD(H_c, T_c), ratio = frechet / frechet_real. Both sides
//                  compare m_c sprites against the same T_c, so the small-sample bias of the
//                  Frechet distance (large for food's 6 held-out sprites) is the same on both,
//                  and 1 means "as close as real sprites the judge never saw". (The first
//                  meter compared halves of the held-out split: 3 food sprites a side, whose
//                  distance is noise, and its headline pooled all classes with matched counts,
//                  so food's failure weighed 3 sprites of 50: it read 1.54 for the sprites an
//                  independent judge scored 34, most of it food);
//                  A ratio far below 1 is as bad as one far above: the sprites sit closer to
//                  the training sprites than unseen real ones do (too typical, too little
//                  variety: sprites16's food read 0.22 and its items 0.08 where an independent
//                  judge put them far from real sprites), so the headline is the factor
//                  max(ratio, 1 / ratio) of the worst class;
//   modes          the real sprites of c (both splits) clustered by k-means in appearance
//                  space (8x8 box-downscaled pixels, alpha included: the classifier's features
//                  are trained to ignore what differs inside a class, and put bones and fruit
//                  in one food cluster) into k = clamp(n_c / 10, 2, 6) modes; a mode holding >= 10% of them is
//                  missed when the share of generated sprites nearest to it is below a quarter
//                  of its real share (judged only where its expected count is >= 4), and
//                  drops_modes flags a class that misses one (generated food without the bones
//                  that are a third of the real food sprites);
//   copies         a generated sprite is a near-copy when its pixel distance (RMS over
//                  8-bit channels, alpha included) to the nearest real sprite is below the
//                  5th percentile of the distances of held-out real sprites to their nearest
//                  training sprite; copy_share is the class's fraction of them, and copies
//                  flags a class above 0.2 and above twice what its unseen real sprites show
//                  (DCSS heroes are recolours of a few bodies: 21% of the held-out ones are
//                  near-copies of training heroes);
//   precision/recall  the k-NN manifold estimate (k = 3) against the held-out images of c.
// Overall: accuracy over all images, worst_frechet_ratio the ratio of the class with the largest
// factor (the headline, worst_frechet_factor),
// frechet_ratio one pooled distance with every class at its m_c, and flags naming each class
// that drops modes or copies.
// The classifier trains once per (dataset file list and sizes, image size, channels, split,
// recipe) and is cached with the held-out and training features in <cache_dir>/<fingerprint>/;
// the dataset's pixels are read at every Open (a few seconds) for the copy check.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/classifier.h"
#include "core/model.h"
#include "core/sampler.h"
#include "core/schedule.h"
#include "common/status.h"

namespace spritediff {

struct MeterOptions {
  std::string data;                         // ImageFolder (or .npy) dataset directory
  int height = 16;                          // the model's image size; the loader resizes
  int channels = 3;                         // 3: judged composited on black; 4: RGBA (alpha judged too)
  std::string cache_dir = "state/eval-cache";
  double held_out_fraction = 0.2;
  uint64_t split_seed = 1;
  int width = 32;                           // classifier widths (ClassifierConfig)
  int feature_dim = 128;
  ClassifierTraining training;
  int knn_k = 3;

  Status Validate() const;
};

struct ClassQuality {
  std::string label;
  int64_t count = 0;          // images judged
  int64_t fd_count = 0;       // m_c: images per side in both Frechet distances
  double accuracy = 0;
  double frechet = 0;
  double frechet_real = 0;
  double frechet_ratio = 0;
  double frechet_factor = 0;  // max(ratio, 1 / ratio): how far off, either way
  double precision = 0;
  double recall = 0;
  int modes = 0;              // real modes of at least 10% (see above)
  int modes_judged = 0;       // of those, the ones with an expected count >= 4
  int modes_missed = 0;
  double mode_share_min = 0;  // smallest generated/real share over the judged modes (1 = matched)
  bool drops_modes = false;
  double copy_share = 0;      // fraction of near-copies of real sprites
  double copy_share_real = 0; // the same for the class's held-out real sprites (against the training split)
  int64_t copied_sources = 0; // distinct real sprites they copy
  bool copies = false;
  // RGBA meters (NaN otherwise): the mean share of a sprite's pixels that are opaque (alpha >=
  // 1/2) for these images and for all real sprites of the class, and the share of pixels with
  // partial alpha (0 < alpha < 1) in these images.
  double opaque_share = 0;
  double opaque_share_real = 0;
  double partial_alpha_share = 0;
};

struct QualityReport {
  std::vector<ClassQuality> classes;  // classes that had images, in the meter's label order
  int64_t count = 0;
  double accuracy = 0;       // over all images
  double frechet = 0;        // all classes pooled, class-matched by composition
  double frechet_real = 0;   // the same for held-out real sprites (query half vs reference half)
  double frechet_ratio = 0;  // frechet / frechet_real
  double worst_frechet_ratio = 0;   // the ratio of the class that is furthest off: the headline
  double worst_frechet_factor = 0;  // its max(ratio, 1 / ratio)
  std::string worst_frechet_class;
  double precision = 0;      // pooled
  double recall = 0;         // pooled
  std::vector<std::string> flags;  // "food drops modes (1 of 3 missed)", "item copies (31%)"
};

nlohmann::json QualityReportToJson(const QualityReport& report);

using MeterLog = std::function<void(const std::string&)>;

class QualityMeter {
 public:
  // Loads the cached classifier for this dataset and options, or trains and caches one.
  static Result<QualityMeter> Open(const MeterOptions& options, const MeterLog& log);

  bool loaded_from_cache() const { return loaded_from_cache_; }
  const std::string& cache_path() const { return cache_path_; }
  const std::string& fingerprint() const { return fingerprint_; }
  const std::vector<std::string>& labels() const { return labels_; }
  int height() const { return options_.height; }
  // The classifier's accuracy on the held-out split, overall and per class.
  double held_out_accuracy() const { return held_out_accuracy_; }
  const std::vector<double>& held_out_class_accuracy() const { return held_out_class_accuracy_; }
  int64_t held_out_count(int c) const;
  int64_t train_count(int c) const;

  int channels() const { return options_.channels; }
  // images: [N, channels, H, W] in [-1, 1] as a model makes them (values are finished as a PNG
  // would hold them: clamped, alpha made binary, rounded to 8 bits); classes: N indices into
  // labels(). A 4-channel image given to a 3-channel meter is composited onto black first.
  Result<QualityReport> Measure(const torch::Tensor& images, const std::vector<int64_t>& classes) const;

  // Real vs real: the held-out images (at most per_class of each class) judged like generated
  // ones: frechet_ratio is 1 by construction where a class gives all its held-out images, and
  // the accuracies, modes and copy shares are what real sprites score.
  Result<QualityReport> MeasureHeldOutReal(int64_t per_class) const;

 private:
  // pixels: [N, C*H*W] flattened 8-bit-rounded images in [-1, 1], and copy_pool the real
  // sprites (same layout) they are checked against for near-copies; undefined pixels: no check.
  Result<QualityReport> MeasureFeatures(const torch::Tensor& features, const torch::Tensor& predicted,
                                        const std::vector<int64_t>& classes, const torch::Tensor& pixels,
                                        const torch::Tensor& copy_pool) const;
  Status PrepareRealSets(const Dataset& data);

  MeterOptions options_;
  std::vector<std::string> labels_;
  std::string fingerprint_;
  std::string cache_path_;
  bool loaded_from_cache_ = false;
  SpriteClassifier net_{nullptr};
  torch::Tensor held_out_features_, held_out_classes_;  // [H, D], [H]
  torch::Tensor train_features_, train_classes_;        // [T, D], [T]
  double held_out_accuracy_ = 0;
  std::vector<double> held_out_class_accuracy_;
  // Pixels of every real sprite, flattened [N, C*H*W], held-out rows in held_out_rows_ order.
  torch::Tensor real_pixels_, train_pixels_, held_out_pixels_;
  double copy_threshold_ = 0;  // the 5th percentile of held-out -> training-split pixel distances
  std::vector<torch::Tensor> mode_centres_;  // per class: [k, D] k-means centres of its real sprites' thumbnails
  std::vector<std::vector<double>> mode_shares_;  // per class: the real share of each centre
  std::vector<double> real_opaque_share_;          // per class, RGBA meters only
  std::vector<double> real_copy_share_;            // per class: held-out near-copies of the training split
};

// Sampler settings for an evaluation run: every class gets per_class sprites, sprite i of
// every class uses seed + i.
struct EvalSampling {
  RowSpec spec;  // sampler, steps, eta, guidance (context and seed are set per sprite)
  int per_class = 100;
  uint64_t seed = 1;
  int batch_rows = 64;  // rows sampled together
};

struct GeneratedSet {
  torch::Tensor images;          // [N, C, H, W]
  std::vector<int64_t> classes;  // meter class index of each image
  double seconds = 0;            // sampling wall time
};

// Samples per_class sprites of each of the model's labels that the meter knows (a label the
// meter does not know is an error naming it). `stop` (optional) cancels between batches.
Result<GeneratedSet> GenerateForMeter(const QualityMeter& meter, ContextUnet& net, const ModelConfig& arch,
                                      const std::vector<std::string>& model_labels, const NoiseSchedule& schedule,
                                      const EvalSampling& sampling, torch::Device device,
                                      const std::function<bool()>& stop = nullptr);

}  // namespace spritediff
