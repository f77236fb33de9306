#include "server/offline_commands.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <random>
#include <sstream>

#include "core/checkpoint.h"
#include "core/image.h"
#include "core/runtime.h"
#include "core/sampler.h"
#include "core/torch_import.h"
#include "core/trainer.h"

namespace spritediff {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void Fail(const std::string& message) {
  std::cerr << "spritediffd: error: " << message << "\n";
  throw CLI::RuntimeError(1);
}

std::atomic<bool> g_stop{false};

void OnInterrupt(int) {
  g_stop.store(true);
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C kills at once
  std::signal(SIGTERM, SIG_DFL);
}

std::string JoinArgs(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) s += (i ? " " : "") + std::string(argv[i]);
  return s;
}

// The device and thread count for an offline command, logged once.
std::string PrepareCompute(const AppConfig& config) {
  Result<std::string> device = ResolveDevice(config.device);
  if (!device.ok()) Fail(device.status().message());
  const int threads = ConfigureThreads(config.threads);
  spdlog::info("device {} with {} intra-op threads, CPU BLAS {}", *device, threads, CpuBlasName());
  const std::string blas_warning = SlowBlasWarning(*device);
  if (!blas_warning.empty()) spdlog::warn(blas_warning);
  return *device;
}

// A --model value is a directory holding model.json, or a name under the models dir.
std::string ModelDir(const std::string& model, const AppConfig& config) {
  if (fs::exists(fs::path(model) / "model.json")) return model;
  const fs::path named = fs::path(config.models_dir) / model;
  if (fs::exists(named / "model.json")) return named.string();
  Fail("--model '" + model + "': neither a model directory nor a model under " + config.models_dir);
}

Result<std::vector<float>> ParseContext(const std::string& text) {
  std::vector<float> values;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      values.push_back(std::stof(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      return Status::InvalidArgument("--context: '" + item + "' is not a number");
    }
  }
  return values;
}

Result<std::vector<std::pair<std::string, float>>> ParseLabels(const std::vector<std::string>& labels) {
  std::vector<std::pair<std::string, float>> mix;
  for (const std::string& l : labels) {
    const size_t colon = l.find(':');
    if (colon == std::string::npos) {
      mix.emplace_back(l, 1.0f);
      continue;
    }
    try {
      size_t used = 0;
      const std::string w = l.substr(colon + 1);
      const float weight = std::stof(w, &used);
      if (used != w.size()) throw std::invalid_argument(w);
      mix.emplace_back(l.substr(0, colon), weight);
    } catch (const std::exception&) {
      return Status::InvalidArgument("--label '" + l + "': expected NAME or NAME:WEIGHT");
    }
  }
  return mix;
}

}  // namespace

AppConfig ResolveConfig(const CommonOptions& common) {
  AppConfig config;
  if (common.config_given || fs::exists(common.config_path)) {
    Result<AppConfig> loaded = LoadConfig(common.config_path);
    if (!loaded.ok()) Fail(loaded.status().message());
    config = *loaded;
  }
  if (common.threads >= 0) config.threads = common.threads;
  if (!common.device.empty()) config.device = common.device;
  return config;
}

void AddTrainCommand(CLI::App& app, const CommonOptions& common) {
  auto* cmd = app.add_subcommand("train", "train a model offline on a folder of sprites");
  auto cfg = std::make_shared<TrainConfig>();
  auto no_flip = std::make_shared<bool>(false);
  cmd->add_option("--data", cfg->data, "dataset: ImageFolder directory or a directory with the course's .npy pair")
      ->required();
  cmd->add_option("--out", cfg->out, "model directory to write, e.g. models/NAME")->required();
  cmd->add_option("--name", cfg->name, "model name (default: last part of --out)");
  cmd->add_option("--n-feat", cfg->n_feat, "base width of the U-Net (multiple of 8)")->capture_default_str();
  cmd->add_option("--height", cfg->height, "image size in pixels: 16 or 32")->capture_default_str();
  cmd->add_option("--epochs", cfg->epochs, "passes over the data")->capture_default_str();
  cmd->add_option("--batch-size", cfg->batch_size, "images per optimizer step")->capture_default_str();
  cmd->add_option("--lr", cfg->lr, "initial Adam learning rate, decayed linearly to 0")->capture_default_str();
  cmd->add_option("--seed", cfg->seed, "seed for initialisation, order, noise")->capture_default_str();
  cmd->add_option("--ema-decay", cfg->ema_decay, "EMA decay of the saved weights; 0 = no EMA")->capture_default_str();
  cmd->add_option("--context-dropout", cfg->context_dropout, "fraction of rows trained without context")
      ->capture_default_str();
  cmd->add_flag("--no-flip", *no_flip, "disable random horizontal flips");
  cmd->add_option("--class-balance", cfg->class_balance, "none | sqrt (sample class c with weight 1/sqrt(n_c))")
      ->capture_default_str();
  cmd->add_option("--checkpoint-every", cfg->checkpoint_every, "epochs between checkpoints")->capture_default_str();
  cmd->add_option("--log-every", cfg->log_every, "optimizer steps between progress lines")->capture_default_str();
  cmd->add_option("--grid-per-label", cfg->sample_grid_per_label, "samples per label in the checkpoint grid")
      ->capture_default_str();
  cmd->add_option("--state", cfg->state_path, "training state file (default OUT/train-state.pt)");
  cmd->add_flag("--resume", cfg->resume, "continue exactly from the training state file");
  cmd->add_option("--init-from", cfg->init_from,
                  "model directory whose weights start this run (fine-tuning or a longer second run); same "
                  "n_feat, height and label count");
  cmd->add_option("--eval-per-class", cfg->eval.per_class,
                  "quality meter at every checkpoint: sprites per label judged (DDIM-25 eta 1 w=2); 0 = off")
      ->check(CLI::Range(0, 1000))->capture_default_str();
  cmd->add_option("--eval-cache-dir", cfg->eval.cache_dir, "where the meter's classifier is cached")
      ->capture_default_str();
  cmd->add_option("--timesteps", cfg->schedule.timesteps, "diffusion steps T")->capture_default_str();
  cmd->add_option("--beta1", cfg->schedule.beta1, "first beta of the linear schedule")->capture_default_str();
  cmd->add_option("--beta2", cfg->schedule.beta2, "last beta of the linear schedule")->capture_default_str();
  cmd->callback([cfg, no_flip, &common] {
    AppConfig config = ResolveConfig(common);
    TrainConfig c = *cfg;
    c.flip = !*no_flip;
    c.device = PrepareCompute(config);
    std::ostringstream line;
    line << "spritediffd train --data " << c.data << " --out " << c.out << " --n-feat " << c.n_feat
         << " --height " << c.height << " --epochs " << c.epochs << " --batch-size " << c.batch_size << " --lr "
         << c.lr << " --seed " << c.seed << " --ema-decay " << c.ema_decay << " --context-dropout "
         << c.context_dropout << (c.flip ? "" : " --no-flip") << " --class-balance " << c.class_balance
         << (c.init_from.empty() ? "" : " --init-from " + c.init_from);
    c.command_line = line.str();
    std::signal(SIGINT, OnInterrupt);
    std::signal(SIGTERM, OnInterrupt);
    spdlog::info("training {} from {}{}", c.out, c.data, c.resume ? " (resuming)" : "");
    Result<TrainSummary> summary = Train(c, &g_stop, [](const TrainProgress& p) {
      if (p.epoch_end) {
        spdlog::info("epoch {}/{} done: loss {:.5f} lr {:.2e} elapsed {:.0f}s{}", p.epoch, p.epochs, p.loss, p.lr,
                     p.elapsed_s, p.checkpoint ? " [checkpoint " + p.grid_path + "]" : "");
        if (p.quality != nullptr) {
          spdlog::info("epoch {} quality: class accuracy {:.3f}, Frechet ratio {:.2f}, precision {:.3f}, recall {:.3f}",
                       p.epoch, p.quality->accuracy, p.quality->frechet_ratio, p.quality->precision, p.quality->recall);
        }
      } else {
        spdlog::info("epoch {}/{} step {} loss {:.5f} {:.0f} images/s lr {:.2e} eta {:.0f}s", p.epoch, p.epochs,
                     p.step, p.loss, p.images_per_s, p.lr, p.eta_s);
      }
    });
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (!summary.ok()) Fail(summary.status().message());
    if (summary->stopped_early) {
      spdlog::info("stopped after {} epochs ({} steps); state saved; continue with --resume", summary->epochs_done,
                   summary->steps);
      return;
    }
    spdlog::info("done: {} epochs, {} steps, final loss {:.5f}, {:.0f}s in all; model in {}", summary->epochs_done,
                 summary->steps, summary->final_loss, summary->wall_s, c.out);
  });
}

void AddSampleCommand(CLI::App& app, const CommonOptions& common) {
  struct Args {
    std::string model = "sprites16";
    std::vector<std::string> labels;
    std::string context;
    int count = 16;
    std::string sampler = "ddim";
    int steps = 0;
    double eta = 0.0;
    double guidance = 2.0;
    uint64_t seed = 0;
    std::string out;
    int upscale = 4;
    int per_label = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("sample", "sample sprites offline and write PNGs");
  cmd->add_option("--per-label", a->per_label, "N sprites of every label, one grid row per label (instead of --label)")
      ->check(CLI::Range(0, 256));
  cmd->add_option("--model", a->model, "model directory, or a name under the models dir")->capture_default_str();
  cmd->add_option("--label", a->labels, "label to condition on, NAME or NAME:WEIGHT; repeat to mix");
  cmd->add_option("--context", a->context, "raw context vector, comma separated (instead of --label)");
  cmd->add_option("--count", a->count, "sprites to make")->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_option("--sampler", a->sampler, "ddpm | ddim")->check(CLI::IsMember({"ddpm", "ddim"}))->capture_default_str();
  cmd->add_option("--steps", a->steps, "denoising steps, 1..T (default: 25 for ddim, T for ddpm)");
  cmd->add_option("--eta", a->eta, "DDIM eta in [0, 1]")->capture_default_str();
  cmd->add_option("--guidance", a->guidance, "classifier-free guidance scale w; 1 = conditional only")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "seed of sprite 0 (sprite i uses seed+i); 0 = random")->capture_default_str();
  cmd->add_option("--out", a->out, "output directory")->required();
  cmd->add_option("--upscale", a->upscale, "nearest-neighbour factor of grid.png")->check(CLI::Range(1, 32))
      ->capture_default_str();
  cmd->callback([a, &common] {
    AppConfig config = ResolveConfig(common);
    const std::string dir = ModelDir(a->model, config);
    const std::string device = PrepareCompute(config);
    Result<LoadedModel> model = LoadModel(dir);
    if (!model.ok()) Fail(model.status().message());
    model->net->to(torch::Device(device));
    const ModelInfo& info = model->info;

    RowSpec spec;
    spec.sampler = a->sampler == "ddpm" ? SamplerKind::kDdpm : SamplerKind::kDdim;
    spec.steps = a->steps > 0 ? a->steps : (spec.sampler == SamplerKind::kDdpm ? info.schedule.timesteps : 25);
    spec.eta = a->eta;
    spec.guidance = a->guidance;
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
    const auto start = Clock::now();
    torch::Tensor x = SampleAll(model->net, NoiseSchedule(info.schedule), specs, torch::Device(device));
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::vector<Image> tiles;
    for (int i = 0; i < total; ++i) {
      Image sprite = TensorToImage(x[i]);
      char name[64];
      std::snprintf(name, sizeof(name), "sprite-%03d.png", i);
      Status s = WritePng((fs::path(a->out) / name).string(), sprite);
      if (!s.ok()) Fail(s.message());
      tiles.push_back(UpscaleNearest(sprite, a->upscale));
    }
    Result<Image> grid = MakeGrid(tiles, a->per_label > 0 ? a->per_label : std::min(total, 8), a->upscale);
    if (!grid.ok()) Fail(grid.status().message());
    Status s = WritePng((fs::path(a->out) / "grid.png").string(), *grid);
    if (!s.ok()) Fail(s.message());
    spdlog::info("{} sprites from {} ({} {} steps, guidance {}, seed {}) in {:.2f}s -> {}", total, info.name,
                 SamplerName(spec.sampler), spec.steps, spec.guidance, seed, seconds, a->out);
  });
}

void AddBenchCommand(CLI::App& app, const CommonOptions& common) {
  struct Args {
    std::string model;
    std::vector<int> batches{1, 4, 16, 32, 64};
    int ddim_batch = 32;
    int steps = 25;
    int repeats = 20;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("bench", "offline speed figures: forward ms per batch size, DDIM samples/s");
  cmd->add_option("--model", a->model, "model directory or name (default: a fresh n_feat=64 16x16 network)");
  cmd->add_option("--batches", a->batches, "batch sizes for the forward timing")->delimiter(',')->capture_default_str();
  cmd->add_option("--ddim-batch", a->ddim_batch, "batch of the DDIM sampling run")->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--steps", a->steps, "DDIM steps")->check(CLI::Range(1, 100000))->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "timed forwards per batch size")->check(CLI::Range(1, 10000))
      ->capture_default_str();
  cmd->callback([a, &common] {
    AppConfig config = ResolveConfig(common);
    const std::string device_name = PrepareCompute(config);
    const torch::Device device(device_name);
    ContextUnet net{nullptr};
    ModelInfo info;
    if (!a->model.empty()) {
      Result<LoadedModel> model = LoadModel(ModelDir(a->model, config));
      if (!model.ok()) Fail(model.status().message());
      net = model->net;
      info = model->info;
    } else {
      torch::manual_seed(0);
      net = ContextUnet(info.arch);
      info.labels = {"a", "b", "c", "d", "e"};
    }
    if (a->steps > info.schedule.timesteps) Fail("--steps must be at most T=" + std::to_string(info.schedule.timesteps));
    net->to(device);
    net->eval();
    torch::NoGradGuard no_grad;
    auto sync = [&] {
      if (device.is_cuda()) torch::cuda::synchronize();
    };
    nlohmann::json report = {{"device", device_name}, {"threads", at::get_num_threads()}, {"blas", CpuBlasName()},
                             {"n_feat", info.arch.n_feat}, {"height", info.arch.height},
                             {"parameters", ParameterCount(*net)}};
    for (int b : a->batches) {
      if (b < 1 || b > 4096) Fail("--batches values must be in [1, 4096]");
      torch::Tensor x = torch::randn({b, info.arch.in_channels, info.arch.height, info.arch.height}).to(device);
      torch::Tensor t = torch::full({b}, 0.5f).to(device);
      torch::Tensor c = torch::zeros({b, info.arch.n_cfeat}).to(device);
      for (int i = 0; i < 3; ++i) net->forward(x, t, c);
      sync();
      const auto start = Clock::now();
      for (int i = 0; i < a->repeats; ++i) net->forward(x, t, c);
      sync();
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count() / a->repeats;
      report["forward_ms"][std::to_string(b)] = std::round(ms * 100) / 100;
      std::printf("forward batch %4d: %8.2f ms  (%7.1f rows/s)\n", b, ms, b * 1000.0 / ms);
    }
    NoiseSchedule schedule(info.schedule);
    for (double guidance : {1.0, 2.0}) {
      std::vector<RowSpec> specs(a->ddim_batch);
      for (int i = 0; i < a->ddim_batch; ++i) {
        specs[i].steps = a->steps;
        specs[i].guidance = guidance;
        specs[i].context.assign(info.arch.n_cfeat, 0.0f);
        specs[i].context[i % info.arch.n_cfeat] = 1.0f;
        specs[i].seed = 1 + i;
      }
      SampleAll(net, schedule, specs, device);  // warm-up
      sync();
      const auto start = Clock::now();
      SampleAll(net, schedule, specs, device);
      sync();
      const double s = std::chrono::duration<double>(Clock::now() - start).count();
      const std::string key = guidance == 1.0 ? "ddim_samples_per_s" : "ddim_guided_samples_per_s";
      report[key] = std::round(a->ddim_batch / s * 100) / 100;
      std::printf("DDIM-%d batch %d guidance %.0f: %.3f s  (%.2f samples/s)\n", a->steps, a->ddim_batch, guidance, s,
                  a->ddim_batch / s);
    }
    std::printf("%s\n", report.dump().c_str());
  });
}

void AddImportCommand(CLI::App& app, const CommonOptions&) {
  struct Args {
    std::string from;
    std::string labels;
    int n_feat = 64;
    int height = 16;
    std::string out;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("import", "turn a course / minDiffusion state_dict (.pth) into a spritediff model");
  cmd->add_option("--from", a->from, "the .pth file (torch.save of model.state_dict())")->required();
  cmd->add_option("--labels", a->labels, "label names in context order, comma separated (n_cfeat of them)")->required();
  cmd->add_option("--n-feat", a->n_feat, "n_feat the checkpoint was trained with")->capture_default_str();
  cmd->add_option("--height", a->height, "image size the checkpoint was trained with")->capture_default_str();
  cmd->add_option("--out", a->out, "model directory to write, e.g. models/NAME")->required();
  cmd->callback([a] {
    ImportOptions options;
    options.n_feat = a->n_feat;
    options.height = a->height;
    options.name = fs::path(a->out).lexically_normal().filename().string();
    std::stringstream ss(a->labels);
    std::string label;
    while (std::getline(ss, label, ',')) {
      if (label.empty()) Fail("--labels: empty label name in '" + a->labels + "'");
      options.labels.push_back(label);
    }
    Result<StateDict> state = ReadTorchStateDict(a->from);
    if (!state.ok()) Fail(state.status().message());
    Result<ImportResult> imported = ImportStateDict(*state, options);
    if (!imported.ok()) Fail(a->from + ": " + imported.status().message());
    for (const std::string& note : imported->notes) spdlog::info("note: {}", note);
    ModelInfo info = imported->model.info;
    info.provenance = {{"imported_from", a->from}, {"tensors", state->size()}, {"import_notes", imported->notes}};
    Status s = SaveModel(a->out, info, imported->model.net);
    if (!s.ok()) Fail(s.message());
    std::ostringstream card;
    card << "# " << info.name << "\n\nImported with `spritediffd import --from " << a->from << " --labels " << a->labels
         << " --n-feat " << a->n_feat << " --height " << a->height << " --out " << a->out << "`.\n\n"
         << "ContextUnet, n_feat " << a->n_feat << ", " << a->height << "x" << a->height << ", labels in context order: "
         << a->labels << ". " << state->size() << " tensors imported.\n";
    for (const std::string& note : imported->notes) card << "\n- " << note << ".\n";
    s = WriteFileAtomic((fs::path(a->out) / "README.md").string(), card.str());
    if (!s.ok()) Fail(s.message());
    spdlog::info("imported {} tensors from {} into {}", state->size(), a->from, a->out);
  });
}

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
