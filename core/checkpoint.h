// The on-disk model format: a directory models/<name>/ holding
//   model.json      architecture, schedule, labels in context order, provenance, and the name
//                   of the weights file it belongs to;
//   weights-<id>.pt the network's parameters and buffers (EMA weights for trained models).
// model.json is the commit point (written last, atomically, like LevelDB's CURRENT file): a
// crash mid-save leaves the previous model.json pointing at the previous, complete weights.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/model.h"
#include "core/sampling_defaults.h"
#include "core/schedule.h"
#include "common/status.h"

namespace spritediff {

struct ModelInfo {
  std::string name;
  ModelConfig arch;
  ScheduleConfig schedule;
  std::vector<std::string> labels;  // context order; size == arch.n_cfeat
  nlohmann::json provenance = nlohmann::json::object();
  // model.json "sampling": recommended settings for requests that leave fields unset. Absent:
  // the built-in defaults (see core/sampling_defaults.h); written back only when present.
  std::optional<SamplingDefaults> sampling;
};

// info.sampling, or the built-in defaults for the model's schedule.
SamplingDefaults EffectiveSamplingDefaults(const ModelInfo& info);

struct LoadedModel {
  ModelInfo info;
  ContextUnet net{nullptr};  // on CPU, in eval mode
};

Status ValidateModelInfo(const ModelInfo& info);
nlohmann::json ModelInfoToJson(const ModelInfo& info);
Result<ModelInfo> ModelInfoFromJson(const nlohmann::json& j, const std::string& where);

// Saves model.json + weights atomically into dir (created if missing).
Status SaveModel(const std::string& dir, const ModelInfo& info, ContextUnet& net);
// Reads model.json only (cheap; for listing).
Result<ModelInfo> ReadModelInfo(const std::string& dir);
// The weights file dir's model.json names ("" when it names none); an error when model.json
// cannot be read or parsed.
Result<std::string> ReadModelWeightsName(const std::string& dir);
// Reads model.json and the weights, checking every tensor's name and shape.
Result<LoadedModel> LoadModel(const std::string& dir);

// Named tensors of a module (parameters and buffers) to and from an archive. Reading checks
// that every expected key is present with the right shape and lists what is wrong.
void WriteModuleTensors(torch::serialize::OutputArchive& archive, torch::nn::Module& module);
Status ReadModuleTensors(torch::serialize::InputArchive& archive, torch::nn::Module& module,
                         const std::string& where);

// Saves an archive to path.tmp, then renames it over path.
// "[2, 3, 16, 16]": a tensor's shape for messages.
std::string ShapeString(const torch::Tensor& t);

// Durable: the archive's temporary file is fsynced, renamed over path, and the directory fsynced.
Status SaveArchiveAtomic(torch::serialize::OutputArchive& archive, const std::string& path);

}  // namespace spritediff
