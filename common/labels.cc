#include "common/labels.h"

#include <sstream>
#include <stdexcept>

namespace spritediff {

namespace {

// The whole of text as a float, or nothing.
bool ParseFloat(const std::string& text, float* out) {
  try {
    size_t used = 0;
    *out = std::stof(text, &used);
    return used == text.size();
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

Result<LabelMix> ParseLabels(const std::vector<std::string>& labels) {
  LabelMix mix;
  for (const std::string& l : labels) {
    const size_t colon = l.find(':');
    if (colon == std::string::npos) {
      mix.emplace_back(l, 1.0f);
      continue;
    }
    float weight = 0;
    if (!ParseFloat(l.substr(colon + 1), &weight)) {
      return Status::InvalidArgument("--label '" + l + "': expected NAME or NAME:WEIGHT with a numeric weight");
    }
    mix.emplace_back(l.substr(0, colon), weight);
  }
  return mix;
}

Result<std::vector<float>> ParseContext(const std::string& text) {
  std::vector<float> values;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    float v = 0;
    if (!ParseFloat(item, &v)) {
      return Status::InvalidArgument("--context: '" + item + "' is not a number (expected e.g. 1,0,0,0,0)");
    }
    values.push_back(v);
  }
  return values;
}

}  // namespace spritediff
