// Bounds for strings that come from a client (model names, labels, dataset paths, job ids) and
// the one way such a string is echoed back into a status message, a log line or a metric label:
// truncated and escaped, so a 3 MB label costs a few dozen bytes of log and never breaks a
// status trailer. Torch-free (part of spritediff_image), so the client may use it too.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace spritediff {

// Caps applied at validation; a request over them is INVALID_ARGUMENT naming the field.
inline constexpr size_t kMaxNameBytes = 128;      // model names (SampleRequest.model, JobSpec names)
inline constexpr size_t kMaxLabelBytes = 128;     // one label (SampleRequest.labels, labels.txt lines)
inline constexpr size_t kMaxPathBytes = 1024;     // JobSpec.dataset (relative to the data root)
inline constexpr size_t kMaxJobIdBytes = 128;     // JobRef.id
inline constexpr size_t kMaxEchoBytes = 64;       // what Echo keeps of a client string

// s truncated to max_bytes, with bytes outside printable ASCII (and '\\', '\'') written as
// \xNN, and a "...(N bytes)" tail when it was cut. The result is at most ~4 * max_bytes + 24.
std::string Echo(std::string_view s, size_t max_bytes = kMaxEchoBytes);

// Whether s is a plain file name that names an entry directly inside a folder: non-empty, at
// most kMaxLabelBytes, not "." or "..", no '/', '\\', NUL or control characters.
bool IsPlainName(std::string_view s);

}  // namespace spritediff
