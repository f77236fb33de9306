// `spritediffd serve`: the long-running gRPC daemon.
#pragma once

#include <CLI/CLI.hpp>

#include "server/offline_commands.h"

namespace spritediff {

void AddServeCommand(CLI::App& app, const CommonOptions& common);

}  // namespace spritediff
