#include "commands/commands.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>

#include "common/image.h"
#include "common/labels.h"
#include "common/sprite_sheet.h"
#include "core/checkpoint.h"
#include "core/sampler.h"
#include "core/sampling_defaults.h"
#include "core/sprite_finish.h"
#include "core/step_graphs.h"

namespace spritediff {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

void AddSampleCommand(CLI::App& app, const CommonOptions& common) {
  struct Args {
    std::string model = "sprites16";
    std::vector<std::string> labels;
    std::string context;
    int count = 16;
    std::string sampler;  // empty: the model's (model.json "sampling")
    int steps = 0;
    double eta = 0.0;
    double guidance = 1.0;
    std::vector<double> guidance_interval;
    uint64_t seed = 0;
    std::string out;
    int upscale = 4;
    int per_label = 0;
    std::string alpha = "binary";
    std::string palette;
    std::vector<std::string> palette_colors;
    bool dither = false;
    std::string background = "checker";
    bool sheet = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("sample", "sample sprites offline and write PNGs");
  cmd->add_option("--per-label", a->per_label, "N sprites of every label, one grid row per label (instead of --label)")
      ->check(CLI::Range(0, 256));
  cmd->add_option("--model", a->model, "model directory, or a name under the models dir")->capture_default_str();
  cmd->add_option("--label", a->labels, "label to condition on, NAME or NAME:WEIGHT; repeat to mix");
  cmd->add_option("--context", a->context, "raw context vector, comma separated (instead of --label)");
  cmd->add_option("--count", a->count, "sprites to make")->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_option("--sampler", a->sampler, SamplerNames() + " (default: the model's)")
      ->check(CLI::IsMember(SamplerNameList()));
  cmd->add_option("--steps", a->steps, "denoising steps, 1..T (default: the model's; T for ddpm)");
  CLI::Option* eta_opt =
      cmd->add_option("--eta", a->eta, "eta in [0, 1] for ddim and dpmpp-2m-sde (default: the model's)");
  CLI::Option* guidance_opt = cmd->add_option(
      "--guidance", a->guidance, "classifier-free guidance scale w; 1 = conditional only (default: the model's)");
  cmd->add_option("--guidance-interval", a->guidance_interval, "LOW,HIGH: guidance only at steps from t in "
                  "(LOW*T, HIGH*T] (default: the model's; 0,1 = every step)")->delimiter(',')->expected(2);
  cmd->add_option("--seed", a->seed, "seed of sprite 0 (sprite i uses seed+i); 0 = random")->capture_default_str();
  cmd->add_option("--out", a->out, "output directory")->required();
  cmd->add_option("--upscale", a->upscale, "nearest-neighbour factor of grid.png")->check(CLI::Range(1, 32))
      ->capture_default_str();
  cmd->add_option("--alpha", a->alpha, "RGBA models: binary (pixel art's: opaque or transparent) or soft alpha")
      ->check(CLI::IsMember({"binary", "soft"}))->capture_default_str();
  cmd->add_option("--palette", a->palette, "lock the sprites' colours to a palette: " + PaletteNames());
  cmd->add_option("--palette-colors", a->palette_colors, "lock to your own palette: 2..256 colours #rrggbb")
      ->delimiter(',');
  cmd->add_flag("--dither", a->dither, "Floyd-Steinberg dithering when locking to a palette");
  cmd->add_option("--background", a->background, "what grid.png shows behind transparency: checker or #rrggbb")
      ->capture_default_str();
  cmd->add_flag("--sheet", a->sheet, "also write sheet.png (every sprite at native size, transparent gaps) and "
                "sheet.json (TexturePacker JSON-hash atlas with each sprite's recipe)");
  cmd->callback([a, &common, eta_opt, guidance_opt] {
    SpriteFinish finish;
    if (!ParseAlphaMode(a->alpha, &finish.alpha)) Fail("--alpha must be binary or soft");
    Result<std::optional<Palette>> palette = ResolvePalette(a->palette, a->palette_colors);
    if (!palette.ok()) Fail("--" + palette.status().message());
    finish.palette = *palette;
    finish.dither = a->dither;
    Background background;
    if (a->background != "checker") {
      Result<Palette> solid = ParsePaletteColors({a->background, a->background});
      if (!solid.ok()) Fail("--background must be checker or #rrggbb, got '" + a->background + "'");
      background.checkerboard = false;
      std::copy(solid->colors[0].begin(), solid->colors[0].end(), background.rgb);
    }
    AppConfig config = ResolveConfig(common);
    const std::string dir = ModelDir(a->model, config);
    const std::string device = PrepareCompute(config);
    Result<LoadedModel> model = LoadModel(dir);
    if (!model.ok()) Fail(model.status().message());
    model->net->to(torch::Device(device));
    PrepareForInference(model->net, config, device);
    const ModelInfo& info = model->info;

    // The daemon's rule for unset fields (core/sampling_defaults.h), so both give the same sprites.
    SamplingChoice choice;
    if (!a->sampler.empty()) {
      SamplerKind kind;
      if (!ParseSamplerName(a->sampler, &kind)) Fail("--sampler must be one of " + SamplerNames());
      choice.sampler = kind;
    }
    if (a->steps > 0) choice.steps = a->steps;
    if (eta_opt->count() > 0) choice.eta = a->eta;
    if (guidance_opt->count() > 0) choice.guidance = a->guidance;
    if (a->guidance_interval.size() == 2) {
      choice.guidance_low = a->guidance_interval[0];
      choice.guidance_high = a->guidance_interval[1];
    }
    const SamplingDefaults used = ResolveSampling(choice, EffectiveSamplingDefaults(info), info.schedule.timesteps);
    RowSpec spec;
    spec.sampler = used.sampler;
    spec.steps = used.steps;
    spec.eta = SamplerUsesEta(used.sampler) ? used.eta : 0.0;
    spec.guidance = used.guidance;
    spec.guidance_low = used.guidance_low;
    spec.guidance_high = used.guidance_high;
    if (!a->labels.empty() && !a->context.empty()) Fail("give --label or --context, not both");
    if (a->per_label > 0 && (!a->labels.empty() || !a->context.empty())) {
      Fail("--per-label makes every label; leave out --label and --context");
    }
    if (!a->context.empty()) {
      Result<std::vector<float>> ctx = ParseContext(a->context);
      if (!ctx.ok()) Fail(ctx.status().message());
      spec.context = *ctx;
    } else if (!a->labels.empty()) {
      Result<std::vector<std::pair<std::string, float>>> mix = ParseLabels(a->labels);
      if (!mix.ok()) Fail(mix.status().message());
      Result<std::vector<float>> ctx = ContextFromLabels(info.labels, *mix);
      if (!ctx.ok()) Fail("--label: " + ctx.status().message());
      spec.context = *ctx;
    } else {
      spec.context.assign(info.labels.size(), 0.0f);  // unconditional
    }
    Status valid = ValidateRowSpec(spec, info.schedule.timesteps, info.arch.n_cfeat);
    if (!valid.ok()) Fail("--" + valid.message());
    uint64_t seed = a->seed;
    if (seed == 0) seed = std::random_device{}() | 1ULL;
    std::vector<RowSpec> specs;
    if (a->per_label > 0) {
      // Row c of the grid is label c; column i uses seed + i in every row.
      for (size_t c = 0; c < info.labels.size(); ++c) {
        for (int i = 0; i < a->per_label; ++i) {
          RowSpec s = spec;
          s.context.assign(info.labels.size(), 0.0f);
          s.context[c] = 1.0f;
          s.seed = seed + i;
          specs.push_back(s);
        }
      }
    } else {
      specs.assign(a->count, spec);
      for (int i = 0; i < a->count; ++i) specs[i].seed = seed + i;
    }
    const int total = static_cast<int>(specs.size());
    std::error_code ec;
    fs::create_directories(a->out, ec);
    if (ec) Fail(a->out + ": cannot create (" + ec.message() + ")");
    // On a GPU, the step as a replayed CUDA graph (config cuda_graphs); on a CPU, eager.
    std::unique_ptr<StepGraphs> graphs;
    if (config.cuda_graphs && torch::Device(device).is_cuda() && StepGraphs::CompiledWithCuda()) {
      graphs = std::make_unique<StepGraphs>(model->net, torch::Device(device), total);
    }
    const auto start = Clock::now();
    torch::Tensor x = SampleAll(model->net, NoiseSchedule(info.schedule), specs, torch::Device(device), graphs.get());
    if (graphs != nullptr && !graphs->capture_error().empty()) spdlog::warn("{}; sampled eagerly", graphs->capture_error());
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::vector<Image> tiles;
    std::vector<SheetSprite> sheet_sprites;
    for (int i = 0; i < total; ++i) {
      Image sprite = FinishSprite(x[i], finish);
      char name[64];
      std::snprintf(name, sizeof(name), "sprite-%03d.png", i);
      Status s = WritePng((fs::path(a->out) / name).string(), sprite);
      if (!s.ok()) Fail(s.message());
      // The checkerboard's squares are a quarter of a sprite's side after the upscale.
      background.cell = std::max(1, info.arch.height * a->upscale / 8);
      tiles.push_back(CompositeOn(UpscaleNearest(sprite, a->upscale), background));
      if (a->sheet) {
        nlohmann::json recipe = {{"model", info.name},
                                 {"seed", specs[i].seed},
                                 {"context", specs[i].context},
                                 {"sampler", SamplerName(specs[i].sampler)},
                                 {"steps", specs[i].steps},
                                 {"eta", specs[i].eta},
                                 {"guidance", specs[i].guidance},
                                 {"guidance_interval", {specs[i].guidance_low, specs[i].guidance_high}}};
        nlohmann::json labels = nlohmann::json::object();
        for (size_t k = 0; k < info.labels.size(); ++k) {
          if (specs[i].context[k] != 0.0f) labels[info.labels[k]] = specs[i].context[k];
        }
        recipe["labels"] = labels;
        if (info.arch.in_channels == 4) recipe["alpha"] = AlphaModeName(finish.alpha);
        if (finish.palette) {
          recipe["palette"] = finish.palette->name;
          if (finish.palette->name == "custom") recipe["palette_colors"] = a->palette_colors;
          if (finish.dither) recipe["dither"] = true;
        }
        sheet_sprites.push_back({name, sprite, std::move(recipe)});
      }
    }
    if (a->sheet) {
      Result<SpriteSheet> sheet = MakeSpriteSheet(sheet_sprites, "sheet.png", a->per_label > 0 ? a->per_label : 0);
      if (!sheet.ok()) Fail(sheet.status().message());
      Status s = WriteSpriteSheet(*sheet, a->out, "sheet");
      if (!s.ok()) Fail(s.message());
    }
    Result<Image> grid = MakeGrid(tiles, a->per_label > 0 ? a->per_label : std::min(total, 8), a->upscale);
    if (!grid.ok()) Fail(grid.status().message());
    Status s = WritePng((fs::path(a->out) / "grid.png").string(), *grid);
    if (!s.ok()) Fail(s.message());
    spdlog::info("{} sprites from {} ({} {} steps, eta {}, guidance {}, seed {}) in {:.2f}s ({:.2f} sprites/s) -> {}",
                 total, info.name, SamplerName(spec.sampler), spec.steps, spec.eta, spec.guidance, seed, seconds,
                 total / std::max(seconds, 1e-9), a->out);
  });
}

}  // namespace spritediff
    std::string sampler = "ddim";
