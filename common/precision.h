// The precision names, written once for every place that takes one: the config's precision and
// training_precision, --precision and --training-precision, JobSpec.precision. What "auto" means
// on a device: ResolveBFloat16 in core/runtime.h.
#pragma once

#include <string>
#include <vector>

namespace spritediff {

inline constexpr const char* kPrecisionChoices = "fp32|bf16|auto";

// {"fp32", "bf16", "auto"}, for a CLI's IsMember check.
inline std::vector<std::string> PrecisionNames() {
  std::vector<std::string> names(1);
  for (const char* p = kPrecisionChoices; *p != '\0'; ++p) {
    if (*p == '|') names.emplace_back(); else names.back() += *p;
  }
  return names;
}

// "fp32, bf16 or auto", for messages.
inline std::string PrecisionNamesText() {
  const std::vector<std::string> names = PrecisionNames();
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return out;
}

}  // namespace spritediff
