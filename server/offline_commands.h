// spritediffd's offline subcommands: train, sample, bench, import and preview. Each registers its flags on
// the CLI and runs without the network.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "server/config.h"

namespace spritediff {

// Options every subcommand shares; parsed before the subcommand runs.
struct CommonOptions {
  std::string config_path = "configs/default.json";
  bool config_given = false;
  int threads = -1;     // -1: from the config
  std::string device;   // empty: from the config
};

// Loads the config (a missing default file is fine; a missing --config file is not) and
// applies the shared flag overrides. Exits the process with a message on error.
AppConfig ResolveConfig(const CommonOptions& common);

void AddTrainCommand(CLI::App& app, const CommonOptions& common);
void AddSampleCommand(CLI::App& app, const CommonOptions& common);
void AddBenchCommand(CLI::App& app, const CommonOptions& common);
void AddImportCommand(CLI::App& app, const CommonOptions& common);
void AddPreviewCommand(CLI::App& app, const CommonOptions& common);

}  // namespace spritediff
