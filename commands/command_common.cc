#include "commands/command_common.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "common/cli_fail.h"
#include "core/runtime.h"

namespace spritediff {

namespace fs = std::filesystem;

[[noreturn]] void Fail(const std::string& message) { FailCli("spritediffd", message); }

AppConfig ResolveConfig(const CommonOptions& common) {
  AppConfig config;
  const ConfigFile file = FindConfigFile(common.config_path);
  if (!file.path.empty()) {
    Result<AppConfig> loaded = LoadConfig(file.path);
    if (!loaded.ok()) Fail(loaded.status().message() + " (config file from " + file.why + ")");
    config = *loaded;
    config.loaded_from = file.path + " (" + file.why + ")";
  }
  if (common.threads >= 0) config.threads = common.threads;
  if (!common.device.empty()) config.device = common.device;
  if (!common.precision.empty()) config.precision = common.precision;
  return config;
}

std::string PrepareCompute(const AppConfig& config) {
  Result<std::string> device = ResolveDevice(config.device);
  if (!device.ok()) Fail(device.status().message());
  const int threads = ConfigureThreads(config.threads);
  spdlog::info("device {} with {} intra-op threads, CPU BLAS {}, config {}", *device, threads, CpuBlasName(),
               config.loaded_from);
  const std::string blas_warning = SlowBlasWarning(*device);
  if (!blas_warning.empty()) spdlog::warn(blas_warning);
  return *device;
}

bool PrepareForInference(ContextUnet& net, const AppConfig& config, const std::string& device, bool channels_last) {
  Result<bool> bf16 = ResolveBFloat16(config.precision, device);
  if (!bf16.ok()) Fail(bf16.status().message());
  Result<bool> fold = ResolveFoldBatchNorm(config.fold_batchnorm, device);
  if (!fold.ok()) Fail(fold.status().message());
  ConvertForInference(net, torch::Device(device), *fold, *bf16, channels_last);
  return *bf16;
}

std::string FindModelDir(const std::string& model, const AppConfig& config) {
  if (fs::exists(fs::path(model) / "model.json")) return model;
  const fs::path named = fs::path(config.models_dir) / model;
  if (fs::exists(named / "model.json")) return named.string();
  return "";
}

std::string ModelDir(const std::string& model, const AppConfig& config) {
  std::string dir = FindModelDir(model, config);
  if (dir.empty()) Fail("--model '" + model + "': neither a model directory nor a model under " + config.models_dir);
  return dir;
}

}  // namespace spritediff
