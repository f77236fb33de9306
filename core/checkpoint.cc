#include "core/checkpoint.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include "common/client_text.h"
#include "common/file_util.h"
#include "common/image.h"

namespace spritediff {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
constexpr const char* kFormat = "spritediff-model";
constexpr int kFormatVersion = 1;

// A model directory's model.json, read with a bound and parsed; names the file on failure.
Result<json> ReadModelJson(const fs::path& dir) {
  const std::string file = (dir / "model.json").string();
  Result<std::string> text = ReadFileBounded(file, kMaxTextFileBytes, "a model.json");
  if (!text.ok()) return text.status();
  try {
    return json::parse(*text);
  } catch (const json::exception& e) {
    return Status::InvalidArgument(file + ": not valid JSON (" + e.what() + ")");
  }
}

// The "weights" entry of a parsed model.json, or "" when it has none (or not a string).
std::string WeightsNamed(const json& j) {
  const auto it = j.is_object() ? j.find("weights") : j.end();
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// An integer field of model.json into *out: a JSON integer that fits an int (get<int>() alone
// would truncate 64.5 and wrap 4294967360 to 64, loading a model that no file describes).
Status ReadIntField(const json& parent, const std::string& name, const char* key, int* out) {
  const json& v = parent.at(key);
  const bool fits = v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(INT32_MAX)
                                           : v.is_number_integer() && v.get<int64_t>() >= INT32_MIN &&
                                                 v.get<int64_t>() <= INT32_MAX;
  if (!fits) return Status::InvalidArgument(name + "." + key + " must be an integer, got " + Echo(v.dump()));
  *out = v.get<int>();
  return Status::Ok();
}

}  // namespace

std::string ShapeString(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

Status ValidateModelInfo(const ModelInfo& info) {
  Status s = info.arch.Validate();
  if (!s.ok()) return s;
  if (info.schedule.timesteps < 1 || info.schedule.timesteps > 100000) {
    return Status::InvalidArgument("schedule.timesteps must be in [1, 100000]");
  }
  if (!(info.schedule.beta1 > 0 && info.schedule.beta1 <= info.schedule.beta2 && info.schedule.beta2 < 1)) {
    return Status::InvalidArgument("schedule needs 0 < beta1 <= beta2 < 1");
  }
  if (static_cast<int>(info.labels.size()) != info.arch.n_cfeat) {
    return Status::InvalidArgument("labels has " + std::to_string(info.labels.size()) + " names but n_cfeat is " +
                                   std::to_string(info.arch.n_cfeat));
  }
  if (info.sampling) {
    Status d = ValidateSamplingDefaults(*info.sampling, info.schedule.timesteps);
    if (!d.ok()) return d;
  }
  return Status::Ok();
}

SamplingDefaults EffectiveSamplingDefaults(const ModelInfo& info) {
  return info.sampling ? *info.sampling : BuiltinSamplingDefaults(info.schedule.timesteps);
}

json ModelInfoToJson(const ModelInfo& info) {
  json j{{"format", kFormat},
              {"format_version", kFormatVersion},
              {"name", info.name},
              {"architecture",
               {{"name", "ContextUnet"},
                {"in_channels", info.arch.in_channels},
                {"n_feat", info.arch.n_feat},
                {"n_cfeat", info.arch.n_cfeat},
                {"height", info.arch.height}}},
              {"schedule",
               {{"kind", "linear"},
                {"timesteps", info.schedule.timesteps},
                {"beta1", info.schedule.beta1},
                {"beta2", info.schedule.beta2}}},
              {"labels", info.labels},
              {"provenance", info.provenance}};
  if (info.sampling) j["sampling"] = SamplingDefaultsToJson(*info.sampling);
  return j;
}

Result<ModelInfo> ModelInfoFromJson(const json& j, const std::string& where) {
  try {
    if (j.value("format", "") != kFormat) return Status::InvalidArgument(where + ": not a spritediff model.json");
    ModelInfo info;
    info.name = j.value("name", "");
    const json& a = j.at("architecture");
    const json& s = j.at("schedule");
    for (const auto& [parent, name, key, out] :
         {std::tuple{&a, "architecture", "in_channels", &info.arch.in_channels},
          std::tuple{&a, "architecture", "n_feat", &info.arch.n_feat},
          std::tuple{&a, "architecture", "n_cfeat", &info.arch.n_cfeat},
          std::tuple{&a, "architecture", "height", &info.arch.height},
          std::tuple{&s, "schedule", "timesteps", &info.schedule.timesteps}}) {
      Status read = ReadIntField(*parent, name, key, out);
      if (!read.ok()) return Status::InvalidArgument(where + ": " + read.message());
    }
    info.schedule.beta1 = s.at("beta1").get<double>();
    info.schedule.beta2 = s.at("beta2").get<double>();
    info.labels = j.at("labels").get<std::vector<std::string>>();
    info.provenance = j.value("provenance", json::object());
    if (j.contains("sampling")) {
      Result<SamplingDefaults> sampling = SamplingDefaultsFromJson(j.at("sampling"), info.schedule.timesteps);
      if (!sampling.ok()) return Status::InvalidArgument(where + ": " + sampling.status().message());
      info.sampling = *sampling;
    }
    Status v = ValidateModelInfo(info);
    if (!v.ok()) return Status::InvalidArgument(where + ": " + v.message());
    return info;
  } catch (const json::exception& e) {
    return Status::InvalidArgument(where + ": " + e.what());
  }
}

void WriteModuleTensors(torch::serialize::OutputArchive& archive, torch::nn::Module& module) {
  for (const auto& p : module.named_parameters()) archive.write(p.key(), p.value());
  for (const auto& b : module.named_buffers()) archive.write(b.key(), b.value(), /*is_buffer=*/true);
}

Status ReadModuleTensors(torch::serialize::InputArchive& archive, torch::nn::Module& module,
                         const std::string& where) {
  std::vector<std::string> problems;
  auto load = [&](const std::string& key, torch::Tensor target, bool is_buffer) {
    torch::Tensor read;
    if (!archive.try_read(key, read, is_buffer)) {
      problems.push_back("missing " + key);
      return;
    }
    if (read.sizes() != target.sizes()) {
      problems.push_back(key + " has shape " + ShapeString(read) + ", expected " + ShapeString(target));
      return;
    }
    torch::NoGradGuard no_grad;
    target.copy_(read);
  };
  for (const auto& p : module.named_parameters()) load(p.key(), p.value(), false);
  for (const auto& b : module.named_buffers()) load(b.key(), b.value(), true);
  if (problems.empty()) return Status::Ok();
  std::string msg = where + ": weights do not fit the architecture:";
  for (size_t i = 0; i < problems.size() && i < 12; ++i) msg += (i ? "; " : " ") + problems[i];
  if (problems.size() > 12) msg += "; and " + std::to_string(problems.size() - 12) + " more";
  return Status::InvalidArgument(msg);
}

Status SaveArchiveAtomic(torch::serialize::OutputArchive& archive, const std::string& path) {
  const std::string tmp = path + ".tmp";
  try {
    archive.save_to(tmp);
  } catch (const std::exception& e) {
    return Status::IoError(tmp + ": " + e.what());
  }
  return CommitFileAtomic(tmp, path);  // fsync, rename, fsync the directory
}

Status SaveModel(const std::string& dir, const ModelInfo& info, ContextUnet& net) {
  if (net->batchnorm_fused()) {
    return Status::FailedPrecondition(dir + ": a network with folded BatchNorms is for serving only; save the loaded one");
  }
  if (net->bfloat16()) {
    return Status::FailedPrecondition(dir + ": a bfloat16 network is for serving only; save the loaded one");
  }
  Status v = ValidateModelInfo(info);
  if (!v.ok()) return v;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::IoError(dir + ": cannot create (" + ec.message() + ")");

  // The previous weights file stays until the new model.json points elsewhere.
  std::string previous;
  if (fs::exists(fs::path(dir) / "model.json")) {
    Result<std::string> old = ReadModelWeightsName(dir);
    if (old.ok()) previous = *old;
  }
  const auto stamp = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
  std::string weights = "weights-" + std::to_string(stamp) + ".pt";
  if (weights == previous) weights = "weights-" + std::to_string(stamp + 1) + ".pt";

  torch::serialize::OutputArchive archive;
  WriteModuleTensors(archive, *net);
  Status s = SaveArchiveAtomic(archive, (fs::path(dir) / weights).string());
  if (!s.ok()) return s;

  json j = ModelInfoToJson(info);
  j["weights"] = weights;
  j["parameters"] = ParameterCount(*net);
  s = WriteFileAtomic((fs::path(dir) / "model.json").string(), j.dump(2) + "\n");
  if (!s.ok()) return s;
  if (!previous.empty() && previous != weights && previous.find('/') == std::string::npos) {
    fs::remove(fs::path(dir) / previous, ec);
  }
  return Status::Ok();
}

Result<ModelInfo> ReadModelInfo(const std::string& dir) {
  Result<json> j = ReadModelJson(dir);
  if (!j.ok()) return j.status();
  return ModelInfoFromJson(*j, (fs::path(dir) / "model.json").string());
}

Result<std::string> ReadModelWeightsName(const std::string& dir) {
  Result<json> j = ReadModelJson(dir);
  if (!j.ok()) return j.status();
  return WeightsNamed(*j);
}

Result<LoadedModel> LoadModel(const std::string& dir) {
  Result<json> j = ReadModelJson(dir);
  if (!j.ok()) return j.status();
  Result<ModelInfo> info = ModelInfoFromJson(*j, (fs::path(dir) / "model.json").string());
  if (!info.ok()) return info.status();
  const std::string weights = WeightsNamed(*j);
  if (weights.empty() || weights.find('/') != std::string::npos || weights.find("..") != std::string::npos) {
    return Status::InvalidArgument(dir + "/model.json: 'weights' must name a file in the model directory");
  }
  const std::string path = (fs::path(dir) / weights).string();
  if (!fs::exists(path)) return Status::NotFound(path + ": weights file is missing");

  LoadedModel loaded;
  loaded.info = *info;
  try {
    loaded.net = ContextUnet(info->arch);
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    Status s = ReadModuleTensors(archive, *loaded.net, path);
    if (!s.ok()) return s;
  } catch (const c10::Error& e) {
    return Status::InvalidArgument(path + ": not a readable weights file (" + e.what_without_backtrace() + ")");
  }
  loaded.net->eval();
  return loaded;
}

}  // namespace spritediff
