// CLI11 checks and help built from the shared rules (common/training_rules.h), so that a flag's
// range and default are the ones the trainer and the daemon apply.
#pragma once

#include <CLI/CLI.hpp>

#include "common/training_rules.h"

namespace spritediff {

// Refuses a value outside setting's range with its message (open bounds included).
inline CLI::Validator SettingCheck(const TrainingSetting& setting) {
  return CLI::Validator(
      [setting](std::string& text) -> std::string {
        double value = 0;
        try {
          size_t used = 0;
          value = std::stod(text, &used);
          if (used != text.size()) return "not a number: " + text;
        } catch (const std::exception&) {
          return "not a number: " + text;
        }
        const Status s = setting.Check(value, setting.flag);
        return s.ok() ? std::string() : s.message();
      },
      setting.Range());
}

}  // namespace spritediff
