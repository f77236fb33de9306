// What spritediffd's subcommands share (the offline ones in commands/ and `serve`): the
// options given before the subcommand, the config they resolve to, and one way to fail.
#pragma once

#include <string>

#include "common/config.h"
#include "core/model.h"

namespace spritediff {

// Options every subcommand shares; parsed before the subcommand runs.
struct CommonOptions {
  std::string config_path;  // --config; empty: FindConfigFile's other choices
  int threads = -1;     // -1: from the config
  std::string device;   // empty: from the config
  std::string precision;  // empty: from the config
};

// Converts a loaded network, already on device, for inference there as the daemon does
// (ConvertForInference): config.fold_batchnorm, config.precision, channels-last on a CUDA device
// unless channels_last is false; returns whether it now runs in bf16. Fails on an unknown value.
bool PrepareForInference(ContextUnet& net, const AppConfig& config, const std::string& device,
                         bool channels_last = true);

// Prints "spritediffd: error: <message>" and makes the command exit 1.
[[noreturn]] void Fail(const std::string& message);

// Loads the config file FindConfigFile picks (none: the built-in defaults; a named file that is
// missing is an error), records which in loaded_from, and applies the shared flag overrides.
// Fails with a message on error.
AppConfig ResolveConfig(const CommonOptions& common);

// The device and thread count for an offline command (libtorch configured), logged once.
std::string PrepareCompute(const AppConfig& config);

// A --model value is a directory holding model.json, or a name under the models dir; empty
// when it is neither.
std::string FindModelDir(const std::string& model, const AppConfig& config);
// FindModelDir, failing with a message naming --model when there is no such model.
std::string ModelDir(const std::string& model, const AppConfig& config);

}  // namespace spritediff
