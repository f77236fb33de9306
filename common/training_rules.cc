#include "common/training_rules.h"

#include <cmath>

#include "common/client_text.h"
#include "common/rule_text.h"

namespace spritediff {

std::string TrainingSetting::Range() const {
  return std::string(min_open ? "(" : "[") + FormatNumber(min) + ", " + FormatNumber(max) + (max_open ? ")" : "]");
}

bool TrainingSetting::Allows(double value) const {
  if (!std::isfinite(value)) return false;
  return (min_open ? value > min : value >= min) && (max_open ? value < max : value <= max);
}

Status TrainingSetting::Check(double value, const std::string& field) const {
  if (Allows(value)) return Status::Ok();
  return Status::InvalidArgument(field + " must be in " + Range() + ", got " + FormatNumber(value));
}

std::string TrainingSetting::Help() const {
  return std::string(doc) + ", in " + Range() + " (default " + FormatNumber(default_value) + ")";
}

Status CheckImageSize(long long value, const std::string& field) {
  if (value == 16 || value == 32) return Status::Ok();
  return Status::InvalidArgument(field + " must be 16 or 32, got " + std::to_string(value));
}

Status CheckChannels(long long value, const std::string& field) {
  if (value == 3 || value == 4) return Status::Ok();
  return Status::InvalidArgument(field + " must be 3 (RGB) or 4 (RGBA), got " + std::to_string(value));
}

Status CheckClassBalance(const std::string& value, const std::string& field) {
  if (value == "none" || value == "sqrt") return Status::Ok();
  return Status::InvalidArgument(field + " must be none or sqrt, got '" + Echo(value, 32) + "'");
}

}  // namespace spritediff
