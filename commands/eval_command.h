// `spritediffd eval`: the quality meter (core/quality_meter.h) on the command line. Judges a
// model under one set of sampler settings, a sweep of settings (--sweep), or a set of images
// (--images: an ImageFolder directory or a PNG grid with one row per label).
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "core/sampler.h"
#include "common/status.h"
#include "commands/command_common.h"

namespace spritediff {

void AddEvalCommand(CLI::App& app, const CommonOptions& common);

// One row of a sweep, written SAMPLER:STEPS:ETA:GUIDANCE[:LOW-HIGH] (e.g. ddim:25:1:2;
// ddpm:500:0:2; ddim:25:1:3:0-0.6 for guidance 3 in the interval (0, 0.6T]).
struct SweepRow {
  SamplerKind sampler = SamplerKind::kDdim;
  int steps = 25;
  double eta = 0;
  double guidance = 1;
  double guidance_low = 0;
  double guidance_high = 1;
};
Result<SweepRow> ParseSweepRow(const std::string& text);
std::vector<SweepRow> DefaultSweep(int timesteps);

}  // namespace spritediff
