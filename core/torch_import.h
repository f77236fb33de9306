// Importing checkpoints saved by PyTorch (torch.save of a state_dict in the zip format) from
// the course notebook or minDiffusion. libtorch 1.13's pickle_load rejects such files (the
// OrderedDict carries a `_metadata` attribute), so the pickle is read by a small unpickler
// that understands exactly what a state_dict holds: ordered dicts, tensors rebuilt from
// storages, and plain values.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "core/checkpoint.h"
#include "common/status.h"

namespace spritediff {

using StateDict = std::vector<std::pair<std::string, torch::Tensor>>;

// Reads name -> tensor pairs from a PyTorch zip checkpoint. A whole-model pickle, a legacy
// (pre-zip) file, a truncated file or a non-checkpoint gives an error saying which.
Result<StateDict> ReadTorchStateDict(const std::string& path);

struct ImportOptions {
  std::string name;
  std::vector<std::string> labels;  // context order; size is n_cfeat
  int n_feat = 64;
  int height = 16;
};

struct ImportResult {
  LoadedModel model;
  std::vector<std::string> notes;  // what the import did that a user should know
};

// Maps the course's / minDiffusion's parameter names onto ours (prefixes such as
// "nn_model." or "module." are dropped). Missing residual shortcut weights are set to zero:
// the course draws a fresh zero-mean random 1x1 conv on every call, whose expectation is
// zero. Unexpected keys and shape mismatches are listed in the error.
Result<ImportResult> ImportStateDict(const StateDict& state, const ImportOptions& options);

}  // namespace spritediff
