// How the rules' messages and help texts write numbers and lists of allowed values: one way for
// the config table, the sampling and training rules and the precision names.
#pragma once

#include <string>
#include <vector>

namespace spritediff {

// A number as the messages write it: whole numbers without a fraction (65535, not 65535.000000
// or 6.5535e+04), others in the shortest usual form (0.25, 0.001, 1e-09).
std::string FormatNumber(double v);
// "a|b|c" -> {"a", "b", "c"} (empty items dropped).
std::vector<std::string> SplitChoices(const char* choices);
// {"a", "b", "c"} -> "a, b or c".
std::string OrList(const std::vector<std::string>& items);

}  // namespace spritediff
