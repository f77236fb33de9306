#include "commands/commands.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <memory>
#include <sstream>

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

}  // namespace spritediff
