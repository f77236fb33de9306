#include "commands/commands.h"
#include "common/precision.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <memory>
#include <sstream>

#include "core/runtime.h"
#include "core/trainer.h"

namespace spritediff {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_stop{false};

void OnInterrupt(int) {
  g_stop.store(true);
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C kills at once
  std::signal(SIGTERM, SIG_DFL);
}

}  // namespace

void AddTrainCommand(CLI::App& app, const CommonOptions& common) {
  auto* cmd = app.add_subcommand("train", "train a model offline on a folder of sprites");
  auto cfg = std::make_shared<TrainConfig>();
  auto no_flip = std::make_shared<bool>(false);
  auto precision = std::make_shared<std::string>();
  cmd->add_option("--data", cfg->data, "dataset: ImageFolder directory or a directory with the course's .npy pair")
      ->required();
  cmd->add_option("--out", cfg->out, "model directory to write, e.g. models/NAME")->required();
  cmd->add_option("--name", cfg->name, "model name (default: last part of --out)");
  cmd->add_option("--n-feat", cfg->n_feat, "base width of the U-Net (multiple of 8)")->capture_default_str();
  cmd->add_option("--height", cfg->height, "image size in pixels: 16 or 32")->capture_default_str();
  cmd->add_option("--channels", cfg->channels, "3: RGB composited onto black (the course's format); 4: RGBA, "
                  "trained on the sprites' own transparency (premultiplied colour plus alpha)")
      ->capture_default_str();
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
  cmd->add_option("--training-precision", *precision, "fp32, bf16 (mixed: bf16 convolutions, float32 weights; "
                  "about 1.4x the images/s on a CPU with AVX-512 BF16) or auto (bf16 there, else fp32); default: "
                  "the config's training_precision (with --resume: the state's)")
      ->check(CLI::IsMember(PrecisionNames()));
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
  // Data parallelism: launched like torchrun (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK).
  auto dist_timeout = std::make_shared<double>(0);
  cmd->add_option("--dist-timeout", *dist_timeout, "seconds a data-parallel rank waits for the others before failing "
                  "(default: SPRITEDIFF_DIST_TIMEOUT_S, else 300)");
  cmd->add_option("--bucket-mb", cfg->distributed.bucket_mb, "gradient MB per all-reduce")->capture_default_str();
  cmd->add_flag("--verify-replicas", cfg->verify_replicas, "check after every step that all ranks hold identical weights");
  cmd->add_option("--simulate-ranks", cfg->simulate_ranks, "single process computing what N ranks compute (comparisons)")
      ->capture_default_str();
  cmd->callback([cfg, no_flip, precision, dist_timeout, &common] {
    AppConfig config = ResolveConfig(common);
    TrainConfig c = *cfg;
    c.flip = !*no_flip;
    c.device = PrepareCompute(config);
    if (!precision->empty()) {
      config.training_precision = *precision;
    } else if (c.resume) {
      // Continue in the precision the state was written in, whatever the config now says; an
      // explicit --training-precision that differs is refused when the state is loaded.
      const std::string state = TrainingStatePath(c);
      std::error_code ec;
      if (std::filesystem::exists(state, ec)) {
        Result<std::string> saved = SavedTrainingPrecision(state);
        if (!saved.ok()) Fail(saved.status().message());
        if (!saved->empty()) config.training_precision = *saved;
      }
    }
    Result<bool> bf16 = ResolveBFloat16(config.training_precision, c.device);
    if (!bf16.ok()) Fail("training_precision: " + bf16.status().message());
    c.bf16_convolutions = *bf16;
    std::ostringstream line;
    line << "spritediffd train --data " << c.data << " --out " << c.out << " --n-feat " << c.n_feat
         << " --height " << c.height << " --channels " << c.channels << " --epochs " << c.epochs << " --batch-size " << c.batch_size << " --lr "
         << c.lr << " --seed " << c.seed << " --ema-decay " << c.ema_decay << " --context-dropout "
         << c.context_dropout << (c.flip ? "" : " --no-flip") << " --class-balance " << c.class_balance
         << (c.init_from.empty() ? "" : " --init-from " + c.init_from)
         << " --training-precision " << (c.bf16_convolutions ? "bf16" : "fp32");
    c.command_line = line.str();
    Result<DistributedConfig> dist = DistributedFromEnv(*dist_timeout);
    if (!dist.ok()) Fail(dist.status().message());
    dist->bucket_mb = cfg->distributed.bucket_mb;
    c.distributed = *dist;
    if (c.distributed.enabled() && c.device == "cuda") c.device += ":" + std::to_string(c.distributed.local_rank);
    spdlog::info("world size {} (this is rank {}), batch {} per rank, global batch {}{}", c.ranks(), c.distributed.rank,
                 c.batch_size, c.batch_size * c.ranks(), c.distributed.enabled() ? ", timeout " + std::to_string(
                     static_cast<int>(c.distributed.timeout_s)) + " s" : std::string());
    std::signal(SIGINT, OnInterrupt);
    std::signal(SIGTERM, OnInterrupt);
    spdlog::info("training {} from {}{}, {}", c.out, c.data, c.resume ? " (resuming)" : "",
                 c.bf16_convolutions ? "mixed precision (bf16 convolutions, float32 weights)" : "fp32");
    const bool data_parallel = c.distributed.enabled();
    Result<TrainSummary> summary = Train(c, &g_stop, [data_parallel](const TrainProgress& p) {
      if (p.epoch_end) {
        spdlog::info("epoch {}/{} done: loss {:.5f} lr {:.2e} elapsed {:.0f}s{}", p.epoch, p.epochs, p.loss, p.lr,
                     p.elapsed_s, p.checkpoint ? " [checkpoint " + p.grid_path + "]" : "");
        if (p.quality != nullptr) {
          spdlog::info("epoch {} quality: class accuracy {:.3f}, Frechet ratio {:.2f}, precision {:.3f}, recall {:.3f}",
                       p.epoch, p.quality->accuracy, p.quality->frechet_ratio, p.quality->precision, p.quality->recall);
        }
      } else {
        spdlog::info("epoch {}/{} step {} loss {:.5f} {:.0f} images/s lr {:.2e} eta {:.0f}s{}", p.epoch, p.epochs,
                     p.step, p.loss, p.images_per_s, p.lr, p.eta_s,
                     data_parallel ? fmt::format(" allreduce wait {:.1f}%", 100 * p.comm_share) : std::string());
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
    if (summary->replicas_verified > 0) {
      spdlog::info("replicas bit-identical on all {} ranks after each of {} steps", c.ranks(), summary->replicas_verified);
    }
    spdlog::info("done: {} epochs, {} steps, final loss {:.5f}, {:.0f}s in all; model in {}", summary->epochs_done,
                 summary->steps, summary->final_loss, summary->wall_s, c.out);
  });
}

}  // namespace spritediff
