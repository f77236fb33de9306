// Trains a ContextUnet to predict the noise added by the forward process
//   x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps,  t ~ U{1..T},  loss = MSE(eps_hat, eps),
// with Adam whose learning rate decays linearly to 0 over the run, context zeroed for a
// fraction of rows (so classifier-free guidance works), random horizontal flips, and an EMA
// copy of the weights that is what gets saved for sampling. The whole training state (weights,
// EMA, Adam, epoch, position in the epoch, RNG) is checkpointed so a resumed run continues
// exactly where the interrupted one stopped.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/dataset.h"
#include "common/status.h"
#include "common/training_rules.h"
#include "core/distributed.h"
#include "core/quality_meter.h"

namespace spritediff {

// The quality meter (core/quality_meter.h) at every checkpoint, on the saved weights: its
// classifier learns the training data (trained once, cached in cache_dir) and judges per_class
// sprites per label made with `sampling` (per_class and seeds 1..per_class). per_class 0 = off.
struct TrainEval {
  int per_class = 0;
  std::string cache_dir = "state/eval-cache";
  MeterOptions meter;     // the classifier's recipe; data, height and cache_dir come from the run
  EvalSampling sampling;  // DDIM-25, eta 1, guidance 2
  TrainEval() {
    sampling.spec.sampler = SamplerKind::kDdim;
    sampling.spec.steps = 25;
    sampling.spec.eta = 1.0;
    sampling.spec.guidance = 2.0;
  }
};

struct TrainConfig {
  std::string data;        // dataset directory
  std::string out;         // model directory written at checkpoints and at the end
  std::string state_path;  // resume state file; empty = <out>/train-state.pt
  std::string name;        // model name; empty = last component of out
  // Defaults and ranges: common/training_rules.h (shared with the daemon's jobs and spritectl).
  int height = training::kDefaultImageSize;
  int channels = training::kDefaultChannels;  // 3: RGB composited onto black; 4: premultiplied RGBA
  int n_feat = static_cast<int>(training::kNFeat.default_value);
  int epochs = static_cast<int>(training::kEpochs.default_value);
  int batch_size = static_cast<int>(training::kBatchSize.default_value);
  double lr = training::kLr.default_value;
  double context_dropout = training::kContextDropout.default_value;
  double ema_decay = training::kEmaDecay.default_value;  // 0 disables EMA (the live weights are saved)
  bool flip = true;
  std::string class_balance = training::kDefaultClassBalance;  // none | sqrt: weight 1/sqrt(class size)
  int checkpoint_every = static_cast<int>(training::kCheckpointEvery.default_value);  // epochs
  int log_every = 50;         // optimizer steps
  uint64_t seed = 0;
  bool resume = false;
  std::string init_from;  // a model directory whose weights start the run (fine-tuning); same
                          // architecture and label count required; ignored when resuming
  int sample_grid_per_label = 8;  // grid written next to the model at checkpoints; 0 disables
  std::string device = "cpu";
  // Mixed precision (ContextUnet::UseBFloat16Convolutions): the convolutions compute in bf16,
  // everything else, the saved weights included, stays float32. Set from the training
  // precision (train --training-precision, config training_precision) through ResolveBFloat16.
  bool bf16_convolutions = false;
  ScheduleConfig schedule;
  std::string command_line;  // recorded in the model's provenance
  // Data parallelism (core/distributed.h). batch_size is per rank; the global batch is
  // batch_size * ranks. Only rank 0 writes files; every rank reads the data and, on resume, the
  // state file (so multi-node runs need --out on shared storage).
  DistributedConfig distributed;
  int simulate_ranks = 1;        // one process computing exactly what this many ranks compute
  bool verify_replicas = false;  // after every step, check every rank holds bit-identical weights

  int ranks() const { return distributed.enabled() ? distributed.world_size : simulate_ranks; }
  TrainEval eval;

  Status Validate() const;
};

struct TrainProgress {
  int epoch = 0;        // 1-based epoch being run
  int epochs = 0;
  int64_t step = 0;     // optimizer steps so far
  int64_t steps_per_epoch = 0;
  double loss = 0;      // mean loss since the last report
  double images_per_s = 0;
  double lr = 0;
  double elapsed_s = 0;
  double eta_s = 0;
  double comm_share = 0;  // fraction of step time spent waiting for all-reduces since the last report
  bool epoch_end = false;
  bool checkpoint = false;
  std::string grid_path;  // set when a sample grid was written
  const std::vector<double>* epoch_losses = nullptr;  // at epoch ends: every completed epoch's mean loss
  const QualityReport* quality = nullptr;  // at checkpoints with TrainConfig::eval on: the meter's figures
};

struct TrainSummary {
  int epochs_done = 0;
  int64_t steps = 0;
  double final_loss = 0;  // mean over the last epoch
  double wall_s = 0;
  bool stopped_early = false;
  int64_t replicas_verified = 0;  // steps after which every rank was checked to hold the same weights
  std::vector<double> epoch_losses;
};

using ProgressFn = std::function<void(const TrainProgress&)>;

// The training state file of a run: state_path, or <out>/train-state.pt when that is empty.
std::string TrainingStatePath(const TrainConfig& c);

// The precision a training state file was written in ("fp32" or "bf16"), or "" for a state
// written before it was recorded; InvalidArgument when the file is not a state file.
Result<std::string> SavedTrainingPrecision(const std::string& state_path);

// Runs (or resumes) training. `stop`, when set, makes it save the state and return cleanly; in
// a data-parallel run a stop on any rank stops every rank at the same step.
Result<TrainSummary> Train(const TrainConfig& config, const std::atomic<bool>* stop, const ProgressFn& progress);

// Copies parameters with decay and floating buffers likewise: ema = d * ema + (1 - d) * live.
void UpdateEma(torch::nn::Module& ema, torch::nn::Module& live, double decay);

// The forward process's coefficients for t = 0..T as float tensors on device:
// {sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)}, what ForwardDiffuse indexes.
std::pair<torch::Tensor, torch::Tensor> ForwardProcessTables(const NoiseSchedule& schedule, torch::Device device);

// Adds noise for timesteps t (int64 [B]) per the forward process.
torch::Tensor ForwardDiffuse(const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& noise,
                             const torch::Tensor& sqrt_alpha_bar, const torch::Tensor& sqrt_one_minus_alpha_bar);

}  // namespace spritediff
