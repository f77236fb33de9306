// The command-line forms of a context, shared by spritectl and spritediffd's offline commands:
// --label NAME or NAME:WEIGHT (repeatable, a mix) and --context 1,0,0.5 (a raw vector).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace spritediff {

using LabelMix = std::vector<std::pair<std::string, float>>;

// Each of labels is NAME (weight 1) or NAME:WEIGHT. An error names the --label value.
Result<LabelMix> ParseLabels(const std::vector<std::string>& labels);
// Comma-separated numbers. An error names the item that is not a number.
Result<std::vector<float>> ParseContext(const std::string& text);

}  // namespace spritediff
