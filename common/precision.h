// The precision names, written once for every place that takes one: the config's precision and
// training_precision, --precision and --training-precision, JobSpec.precision. What "auto" means
// on a device: ResolveBFloat16 in core/runtime.h.
#pragma once

#include <string>
#include <vector>

#include "common/rule_text.h"

namespace spritediff {

inline constexpr const char* kPrecisionChoices = "fp32|bf16|auto";

// {"fp32", "bf16", "auto"}, for a CLI's IsMember check.
inline std::vector<std::string> PrecisionNames() { return SplitChoices(kPrecisionChoices); }
// "fp32, bf16 or auto", for messages.
inline std::string PrecisionNamesText() { return OrList(PrecisionNames()); }

}  // namespace spritediff
