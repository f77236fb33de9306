// spritectl train submit|watch|list|get|cancel: the client side of service Training.
#pragma once

#include <CLI/CLI.hpp>

namespace spritectl {

void AddTrainCommands(CLI::App& app);

}  // namespace spritectl
