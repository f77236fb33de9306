// spritediffd's offline subcommands: train, sample, bench, import and preview, one file each in
// commands/. Each registers its flags on the CLI and runs without the network: this folder
// links spritediff_core and spritediff_common only (no gRPC, no HTTP).
#pragma once

#include <CLI/CLI.hpp>

#include "commands/command_common.h"

namespace spritediff {

void AddTrainCommand(CLI::App& app, const CommonOptions& common);
void AddSampleCommand(CLI::App& app, const CommonOptions& common);
void AddBenchCommand(CLI::App& app, const CommonOptions& common);
void AddImportCommand(CLI::App& app, const CommonOptions& common);
void AddPreviewCommand(CLI::App& app, const CommonOptions& common);
// `config`: the config a command would use and where it came from, the defaults, the docs page.
void AddConfigCommand(CLI::App& app, const CommonOptions& common);

}  // namespace spritediff
