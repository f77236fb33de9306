#include "client/train_commands.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "client/cli_common.h"
#include "common/cli_rules.h"
#include "common/image.h"
#include "common/precision.h"
#include "common/proto_json.h"
#include "spritediff/v1/training.grpc.pb.h"

namespace spritectl {

namespace {

namespace fs = std::filesystem;
namespace v1 = spritediff::v1;

std::string StateName(v1::JobState s) {
  std::string name = v1::JobState_Name(s);
  const std::string prefix = "JOB_STATE_";
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

bool IsFinal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED ||
         s == v1::JOB_STATE_INTERRUPTED;
}

std::string FormatSeconds(double s) {
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%dh%02dm", static_cast<int>(s / 3600), static_cast<int>(s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof(buf), "%dm%02ds", static_cast<int>(s / 60), static_cast<int>(s) % 60);
  else std::snprintf(buf, sizeof(buf), "%.0fs", s);
  return buf;
}

void PrintJobJson(const v1::Job& job) { std::printf("%s", spritediff::MessageToJson(job).c_str()); }

// Streams a job's events until it reaches a final state. Returns the exit code: 0 when the
// job SUCCEEDED, 1 otherwise.
int Watch(v1::Training::Stub& stub, const std::string& id, const std::string& grids_dir, bool quiet,
          const Connection& c) {
  if (!grids_dir.empty()) {
    std::error_code ec;
    fs::create_directories(grids_dir, ec);
    if (ec) Fail("--grids " + grids_dir + ": cannot create (" + ec.message() + ")");
  }
  grpc::ClientContext ctx;  // no deadline: training takes as long as it takes
  v1::JobRef ref;
  ref.set_id(id);
  auto reader = stub.WatchJob(&ctx, ref);
  const bool tty = isatty(STDERR_FILENO) != 0;
  v1::JobEvent ev;
  v1::Job last;
  v1::JobState shown = v1::JOB_STATE_UNSPECIFIED;
  uint32_t shown_epoch = 0;
  while (reader->Read(&ev)) {
    last = ev.job();
    const v1::JobProgress& p = last.progress();
    if (last.state() != shown && !quiet) {
      if (tty) std::fprintf(stderr, "\n");
      std::fprintf(stderr, "%s %s%s%s\n", id.c_str(), StateName(last.state()).c_str(),
                   last.message().empty() ? "" : ": ", last.message().c_str());
      shown = last.state();
    }
    if (!ev.sample_grid_png().empty() && !grids_dir.empty()) {
      char name[64];
      std::snprintf(name, sizeof(name), "grid-epoch-%04u.png", ev.grid_epoch());
      spritediff::Status w = spritediff::WriteFileAtomic((fs::path(grids_dir) / name).string(), ev.sample_grid_png());
      if (!w.ok()) Fail(w.message());
      if (!quiet && !tty) std::fprintf(stderr, "sample grid for epoch %u -> %s\n", ev.grid_epoch(), name);
    }
    if (quiet || last.state() != v1::JOB_STATE_RUNNING || p.epochs() == 0) continue;
    if (tty) {
      const int width = 30;
      const int filled = static_cast<int>(std::min<uint32_t>(p.epoch(), p.epochs()) * width / p.epochs());
      std::fprintf(stderr, "\r[%s%s] epoch %u/%u  loss %.4f  %.0f img/s  ETA %s   ", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), p.epoch(), p.epochs(), p.loss(), p.images_per_s(),
                   FormatSeconds(p.eta_s()).c_str());
    } else if (p.epoch() != shown_epoch) {
      std::fprintf(stderr, "epoch %u/%u loss %.4f %.0f img/s ETA %s\n", p.epoch(), p.epochs(), p.loss(),
                   p.images_per_s(), FormatSeconds(p.eta_s()).c_str());
      shown_epoch = p.epoch();
    }
    std::fflush(stderr);
  }
  grpc::Status s = reader->Finish();
  if (tty && !quiet) std::fprintf(stderr, "\n");
  if (!s.ok()) FailRpc(s, c);
  if (!IsFinal(last.state())) Fail("the watch ended before job " + id + " finished");
  const v1::JobProgress& p = last.progress();
  std::printf("%s %s: model %s, %u epochs, final loss %.5f, %s%s%s\n", id.c_str(), StateName(last.state()).c_str(),
              last.spec().model_name().c_str(), p.epoch(), p.loss(), FormatSeconds(p.elapsed_s()).c_str(),
              last.message().empty() ? "" : " - ", last.message().c_str());
  return last.state() == v1::JOB_STATE_SUCCEEDED ? 0 : 1;
}

void SubmitCommand(CLI::App* train) {
  struct Args {
    Connection c;
    v1::JobSpec spec;
    std::string model_name, dataset, base_model, class_balance, precision;
    uint32_t image_size = 0, n_feat = 0, epochs = 0, batch_size = 0, checkpoint_every = 0, channels = 0;
    float lr = 0, context_dropout = -1, ema_decay = -1;
    uint64_t seed = 0;
    bool no_flip = false, watch = false, quiet = false;
    std::string grids;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = train->add_subcommand("submit", "queue a training job on the daemon; prints its id");
  AddConnectionOptions(cmd, a->c);
  cmd->add_option("--name", a->model_name, "name of the model to produce ([A-Za-z0-9._-], up to 64)")->required();
  cmd->add_option("--dataset", a->dataset,
                  "folder under the daemon's data root: one folder of PNGs per class (or the course's .npy pair)")
      ->required();
  using namespace spritediff::training;  // NOLINT: the settings' table
  cmd->add_option("--image-size", a->image_size, "16 or 32 (default " + std::to_string(kDefaultImageSize) +
                  ", or the base model's)")->check(CLI::IsMember({16, 32}));
  cmd->add_option("--n-feat", a->n_feat, kNFeat.Help() + "; a fine-tune keeps the base model's")
      ->check(spritediff::SettingCheck(kNFeat));
  cmd->add_option("--channels", a->channels, "3 (RGB on black) or 4 (RGBA, the sprites' own transparency); "
                  "default 3, or the base model's")->check(CLI::IsMember({3, 4}));
  for (const auto& [setting, value] :
       {std::pair{&kEpochs, &a->epochs}, {&kBatchSize, &a->batch_size}, {&kCheckpointEvery, &a->checkpoint_every}}) {
    cmd->add_option(setting->flag, *value, setting->Help())->check(spritediff::SettingCheck(*setting));
  }
  for (const auto& [setting, value] :
       {std::pair{&kLr, &a->lr}, {&kContextDropout, &a->context_dropout}, {&kEmaDecay, &a->ema_decay}}) {
    cmd->add_option(setting->flag, *value, setting->Help())->check(spritediff::SettingCheck(*setting));
  }
  cmd->add_option("--seed", a->seed, "training seed (default 1)");
  cmd->add_option("--base-model", a->base_model, "a served model to fine-tune from");
  cmd->add_option("--class-balance", a->class_balance,
                  std::string("none or sqrt: class c weighted 1/sqrt(n_c) (default ") + kDefaultClassBalance + ")")
      ->check(CLI::IsMember({"none", "sqrt"}));
  cmd->add_flag("--no-flip", a->no_flip, "no random horizontal flips");
  cmd->add_option("--precision", a->precision, "fp32, bf16 (mixed: bf16 convolutions, float32 weights) or auto "
                  "(default: the daemon's training_precision)")
      ->check(CLI::IsMember(spritediff::PrecisionNames()));
  cmd->add_flag("--watch", a->watch, "then watch the job to its end (exit 0 only if it succeeds)");
  cmd->add_option("--grids", a->grids, "with --watch: write each checkpoint's sample grid into this folder");
  cmd->add_flag("--quiet", a->quiet, "no progress output");
  cmd->callback([a] {
    v1::JobSpec spec;
    spec.set_model_name(a->model_name);
    spec.set_dataset(a->dataset);
    spec.set_image_size(a->image_size);
    spec.set_n_feat(a->n_feat);
    spec.set_channels(a->channels);
    spec.set_epochs(a->epochs);
    spec.set_batch_size(a->batch_size);
    if (a->lr > 0) spec.set_lr(a->lr);
    if (a->context_dropout >= 0) spec.set_context_dropout(a->context_dropout);
    if (a->ema_decay >= 0) spec.set_ema_decay(a->ema_decay);
    spec.set_checkpoint_every(a->checkpoint_every);
    spec.set_seed(a->seed);
    spec.set_base_model(a->base_model);
    spec.set_class_balance(a->class_balance);
    spec.set_no_flip(a->no_flip);
    spec.set_precision(a->precision);
    auto stub = v1::Training::NewStub(Connect(a->c));
    grpc::ClientContext ctx;
    SetDeadline(ctx, a->c.timeout_s);
    v1::Job job;
    grpc::Status s = stub->SubmitJob(&ctx, spec, &job);
    if (!s.ok()) FailRpc(s, a->c);
    std::printf("%s %s: model %s from %s, %u epochs, batch %u, %upx, n_feat %u, %s\n", job.id().c_str(),
                StateName(job.state()).c_str(), job.spec().model_name().c_str(), job.spec().dataset().c_str(),
                job.spec().epochs(), job.spec().batch_size(), job.spec().image_size(), job.spec().n_feat(),
                job.spec().precision().empty() ? "fp32" : job.spec().precision().c_str());
    std::fflush(stdout);
    if (a->watch) {
      const int code = Watch(*stub, job.id(), a->grids, a->quiet, a->c);
      if (code != 0) throw CLI::RuntimeError(code);
    }
  });
}

void WatchCommand(CLI::App* train) {
  struct Args {
    Connection c;
    std::string id, grids;
    bool quiet = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = train->add_subcommand("watch", "follow a job's progress to its end (exit 0 only if it succeeds)");
  AddConnectionOptions(cmd, a->c);
  cmd->add_option("job", a->id, "job id (from submit or list)")->required();
  cmd->add_option("--grids", a->grids, "write each checkpoint's sample grid into this folder");
  cmd->add_flag("--quiet", a->quiet, "no progress output");
  cmd->callback([a] {
    auto stub = v1::Training::NewStub(Connect(a->c));
    const int code = Watch(*stub, a->id, a->grids, a->quiet, a->c);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

void ListCommand(CLI::App* train) {
  struct Args {
    Connection c;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = train->add_subcommand("list", "the daemon's jobs, oldest first");
  AddConnectionOptions(cmd, a->c);
  cmd->add_flag("--json", a->json, "one JSON object per job");
  cmd->callback([a] {
    auto stub = v1::Training::NewStub(Connect(a->c));
    grpc::ClientContext ctx;
    SetDeadline(ctx, a->c.timeout_s);
    v1::ListJobsResponse resp;
    grpc::Status s = stub->ListJobs(&ctx, v1::ListJobsRequest(), &resp);
    if (!s.ok()) FailRpc(s, a->c);
    if (a->json) {
      for (const v1::Job& job : resp.jobs()) PrintJobJson(job);
      return;
    }
    std::printf("%-11s %-12s %-20s %-11s %-9s %s\n", "JOB", "STATE", "MODEL", "EPOCH", "LOSS", "MESSAGE");
    for (const v1::Job& job : resp.jobs()) {
      char epoch[32];
      std::snprintf(epoch, sizeof(epoch), "%u/%u", job.progress().epoch(), job.spec().epochs());
      std::printf("%-11s %-12s %-20s %-11s %-9.5f %s\n", job.id().c_str(), StateName(job.state()).c_str(),
                  job.spec().model_name().c_str(), epoch, job.progress().loss(), job.message().c_str());
    }
  });
}

// `train NAME JOB`: one unary Training call on a job id, its answer shown by show.
void JobRefCommand(CLI::App* train, const char* name, const char* help,
                   grpc::Status (v1::Training::Stub::*rpc)(grpc::ClientContext*, const v1::JobRef&, v1::Job*),
                   void (*show)(const v1::Job&)) {
  struct Args {
    Connection c;
    std::string id;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = train->add_subcommand(name, help);
  AddConnectionOptions(cmd, a->c);
  cmd->add_option("job", a->id, "job id")->required();
  cmd->callback([a, rpc, show] {
    auto stub = v1::Training::NewStub(Connect(a->c));
    grpc::ClientContext ctx;
    SetDeadline(ctx, a->c.timeout_s);
    v1::JobRef ref;
    ref.set_id(a->id);
    v1::Job job;
    grpc::Status s = ((*stub).*rpc)(&ctx, ref, &job);
    if (!s.ok()) FailRpc(s, a->c);
    show(job);
  });
}

void GetCommand(CLI::App* train) { JobRefCommand(train, "get", "one job as JSON", &v1::Training::Stub::GetJob, PrintJobJson); }

void CancelCommand(CLI::App* train) {
  // The daemon answers at once: a running job shows cancel_requested and stops at its next step.
  JobRefCommand(train, "cancel", "stop a queued or running job (its model is not published)",
                &v1::Training::Stub::CancelJob, [](const v1::Job& job) {
                  std::printf("%s %s%s%s\n", job.id().c_str(), StateName(job.state()).c_str(),
                              job.message().empty() ? "" : ": ", job.message().c_str());
                });
}

}  // namespace

void AddTrainCommands(CLI::App& app) {
  auto* train = app.add_subcommand("train", "training jobs on the daemon: submit, watch, list, get, cancel");
  train->require_subcommand(1);
  SubmitCommand(train);
  WatchCommand(train);
  ListCommand(train);
  GetCommand(train);
  CancelCommand(train);
}

}  // namespace spritectl
