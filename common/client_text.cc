#include "common/client_text.h"

#include <cstdio>

namespace spritediff {

std::string Echo(std::string_view s, size_t max_bytes) {
  const std::string_view kept = s.substr(0, max_bytes);
  std::string out;
  out.reserve(kept.size() + 24);
  for (const char ch : kept) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c >= 0x7f || c == '\\' || c == '\'' || c == '"') {
      char hex[5];
      std::snprintf(hex, sizeof(hex), "\\x%02x", c);
      out += hex;
    } else {
      out += ch;
    }
  }
  if (s.size() > max_bytes) out += "...(" + std::to_string(s.size()) + " bytes)";
  return out;
}

bool IsPlainName(std::string_view s) {
  if (s.empty() || s.size() > kMaxLabelBytes || s == "." || s == "..") return false;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f || ch == '/' || ch == '\\') return false;
  }
  return true;
}

}  // namespace spritediff
