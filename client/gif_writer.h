// Animated GIF output (giflib) for the denoising frames spritectl receives.
#pragma once

#include <string>
#include <vector>

#include "common/image.h"
#include "common/status.h"

namespace spritediff {

// Writes equally sized RGB frames as a looping GIF, each frame quantized to its own
// 256-colour map; delay in hundredths of a second per frame, the last one held longer.
// Written to path.tmp, then renamed.
Status WriteGif(const std::string& path, const std::vector<Image>& frames, int delay_cs, int last_delay_cs);

}  // namespace spritediff
