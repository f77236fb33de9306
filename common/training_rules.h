// The settings of a training run, each written once (name, CLI flag, default, range, doc) and
// read by the trainer (core/trainer.h: TrainConfig's defaults and Validate), the daemon's job
// specs (server/training_plan.cc), `spritediffd train` and `spritectl train submit` (their flags'
// checks and help). Torch-free, so spritectl shares them.
#pragma once

#include <string>

#include "common/status.h"

namespace spritediff {

struct TrainingSetting {
  const char* name;  // the JobSpec field, "batch_size"
  const char* flag;  // the CLI flag, "--batch-size"
  double default_value;
  double min;
  double max;
  bool min_open;  // min itself is outside the range: (0, 1]
  bool max_open;  // max itself is outside: [0, 1)
  const char* doc;

  // "[2, 4096]", "(0, 1]".
  std::string Range() const;
  bool Allows(double value) const;
  // "<field> must be in [2, 4096], got 1"; field is name or flag, as the caller speaks.
  Status Check(double value, const std::string& field) const;
  // "<doc>, in [2, 4096] (default 64)": a flag's help text.
  std::string Help() const;
};

namespace training {
inline constexpr TrainingSetting kNFeat{"n_feat", "--n-feat", 64, 1, 512, false, false, "network width"};
inline constexpr TrainingSetting kEpochs{"epochs", "--epochs", 100, 1, 100000, false, false, "passes over the dataset"};
inline constexpr TrainingSetting kBatchSize{"batch_size", "--batch-size", 64, 2, 4096, false, false,
                                            "images per optimizer step (at most the dataset's images)"};
inline constexpr TrainingSetting kLr{"lr", "--lr", 1e-3, 0, 1, true, false,
                                     "initial Adam learning rate, decayed linearly to 0"};
inline constexpr TrainingSetting kContextDropout{"context_dropout", "--context-dropout", 0.1, 0, 1, false, false,
                                                 "fraction of rows trained without context (for guidance)"};
inline constexpr TrainingSetting kEmaDecay{"ema_decay", "--ema-decay", 0.999, 0, 1, false, true,
                                           "EMA decay of the saved weights; 0 = no EMA"};
inline constexpr TrainingSetting kCheckpointEvery{"checkpoint_every", "--checkpoint-every", 10, 1, 100000, false,
                                                  false, "epochs between checkpoints and sample grids"};
inline constexpr TrainingSetting kEvalPerClass{"eval_per_class", "--eval-per-class", 0, 0, 1000, false, false,
                                               "quality meter at every checkpoint: sprites per label judged; 0 = off"};
// Choices.
inline constexpr int kDefaultImageSize = 16;  // or 32
inline constexpr int kDefaultChannels = 3;    // 3: RGB composited onto black; 4: RGBA (core/dataset.h)
inline constexpr const char* kDefaultClassBalance = "none";  // or "sqrt": class c weighted 1/sqrt(n_c)
}  // namespace training

// The choices' checks, naming field: "image_size must be 16 or 32, got 24".
Status CheckImageSize(long long value, const std::string& field);
Status CheckChannels(long long value, const std::string& field);
Status CheckClassBalance(const std::string& value, const std::string& field);

}  // namespace spritediff
