#include "common/rule_text.h"

#include <cmath>
#include <cstdint>
#include <sstream>

namespace spritediff {

std::string FormatNumber(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e18) return std::to_string(static_cast<int64_t>(v));
  std::ostringstream out;
  out << v;
  return out.str();
}

std::vector<std::string> SplitChoices(const char* choices) {
  std::vector<std::string> out;
  std::string item;
  for (const char* p = choices;; ++p) {
    if (*p == '|' || *p == '\0') {
      if (!item.empty()) out.push_back(item);
      item.clear();
      if (*p == '\0') break;
    } else {
      item += *p;
    }
  }
  return out;
}

std::string OrList(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += i + 1 == items.size() ? " or " : ", ";
    out += items[i];
  }
  return out;
}

}  // namespace spritediff
