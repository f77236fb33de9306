// The project's quality meter: judges sprites (generated, or any set of images) against a
// dataset with a classifier trained on a fixed split of it (core/classifier.h). For images
// that were meant to show class c it reports, per class and overall:
//   accuracy   the fraction the classifier assigns to c;
//   frechet    the Frechet distance of their classifier features to the reference half of
//              the held-out real images of c (core/sample_metrics.h), and frechet_real, the
//              same distance from the other (query) half of the held-out images of c (real vs
//              real). Both use m_c = min(images given for c, query images of c) images, so
//              sample-size bias cancels in the ratio. The baseline is held-out against held-out
//              on purpose: the classifier was fitted to its training split, whose features sit
//              closer to the class centres than unseen real sprites do, so a training-split
//              baseline flattered real sprites and let a generator score below 1. The halves
//              come from a seeded shuffle of each class's held-out images (the query half is
//              the smaller one when the count is odd). Overall accuracy is over all images, and
//              frechet_ratio = frechet / frechet_real (1 = as close as real sprites; overall: one
//              distance over all classes pooled with matched class counts);
//   precision/recall  the k-NN manifold estimate (k = 3) against the held-out images of c;
//              overall, all images against all held-out images.
// The classifier trains once per (dataset file list and sizes, image size, split, recipe) and
// is cached with the held-out and training features in <cache_dir>/<fingerprint>/, so the
// dataset may be read-only and later runs need not read its images at all.
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
  double precision = 0;
  double recall = 0;
};

struct QualityReport {
  std::vector<ClassQuality> classes;  // classes that had images, in the meter's label order
  int64_t count = 0;
  double accuracy = 0;       // over all images
  double frechet = 0;        // all classes pooled, class-matched by composition
  double frechet_real = 0;   // the same for held-out real sprites (query half vs reference half)
  double frechet_ratio = 0;  // frechet / frechet_real
  double precision = 0;      // pooled
  double recall = 0;         // pooled
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

  // images: [N, 3, H, W] in [-1, 1] (values are clamped and rounded to 8 bits first, as a
  // PNG would hold them); classes: N indices into labels().
  Result<QualityReport> Measure(const torch::Tensor& images, const std::vector<int64_t>& classes) const;

  // Real vs real: the query half of the held-out images (at most per_class of each class),
  // judged like generated ones: frechet_ratio is 1 by construction, and the accuracies are the
  // classifier's on those unseen images.
  Result<QualityReport> MeasureHeldOutReal(int64_t per_class) const;

 private:
  Result<QualityReport> MeasureFeatures(const torch::Tensor& features, const torch::Tensor& predicted,
                                        const std::vector<int64_t>& classes) const;
  // The held-out features of class c in two halves of a seeded shuffle: {query, reference}.
  std::pair<torch::Tensor, torch::Tensor> HeldOutHalves(int c) const;

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
  torch::Tensor images;          // [N, 3, H, W]
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
