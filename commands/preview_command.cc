#include "commands/commands.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <random>

#include "common/image.h"
#include "core/dataset.h"
#include "core/sampler.h"
#include "core/checkpoint.h"

namespace spritediff {

namespace fs = std::filesystem;

void AddPreviewCommand(CLI::App& app, const CommonOptions&) {
  struct Args {
    std::string data;
    std::string out;
    int height = 16;
    int per_label = 10;
    uint64_t seed = 1;
    int upscale = 4;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "preview", "grid of real training images as the trainer sees them (size, alpha on black), one row per label");
  cmd->add_option("--data", a->data, "ImageFolder directory or course .npy directory")->required();
  cmd->add_option("--out", a->out, "PNG file to write")->required();
  cmd->add_option("--height", a->height, "image size the trainer would use")->check(CLI::IsMember({16, 32}))
      ->capture_default_str();
  cmd->add_option("--per-label", a->per_label, "images per label (fewer when a label has fewer)")
      ->check(CLI::Range(1, 256))->capture_default_str();
  cmd->add_option("--seed", a->seed, "which images are picked")->capture_default_str();
  cmd->add_option("--upscale", a->upscale, "nearest-neighbour factor")->check(CLI::Range(1, 32))->capture_default_str();
  cmd->callback([a] {
    Result<Dataset> data = LoadDataset(a->data, a->height);
    if (!data.ok()) Fail("--data: " + data.status().message());
    // Each label's images in a seeded random order; rows shorter than --per-label stay black.
    std::mt19937_64 rng(a->seed);
    const torch::Tensor classes = data->contexts.argmax(1);
    const Image blank(a->height * a->upscale, a->height * a->upscale, 3);
    std::vector<Image> tiles;
    for (size_t c = 0; c < data->labels.size(); ++c) {
      const torch::Tensor rows = (classes == static_cast<int64_t>(c)).nonzero().flatten();
      std::vector<int64_t> picks(rows.data_ptr<int64_t>(), rows.data_ptr<int64_t>() + rows.numel());
      std::shuffle(picks.begin(), picks.end(), rng);
      for (int i = 0; i < a->per_label; ++i) {
        tiles.push_back(i < static_cast<int>(picks.size()) ? UpscaleNearest(TensorToImage(data->images[picks[i]]), a->upscale)
                                                           : blank);
      }
      spdlog::info("row {}: {} ({} images)", c, data->labels[c], picks.size());
    }
    Result<Image> grid = MakeGrid(tiles, a->per_label, a->upscale);
    if (!grid.ok()) Fail(grid.status().message());
    Status s = WritePng(a->out, *grid);
    if (!s.ok()) Fail(s.message());
    spdlog::info("{} images of {} labels from {} -> {}", tiles.size(), data->labels.size(), a->data, a->out);
  });
}

}  // namespace spritediff
