// `spritediffd serve`: the long-running gRPC daemon.
#pragma once

#include <CLI/CLI.hpp>

#include "commands/command_common.h"

namespace spritediff {

void AddServeCommand(CLI::App& app, const CommonOptions& common);

}  // namespace spritediff
