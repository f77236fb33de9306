#include "server/model_publisher.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include "common/file_util.h"
#include "core/checkpoint.h"
#include "server/model_registry.h"

namespace spritediff {

namespace fs = std::filesystem;

std::string ModelCard(const v1::Job& job) {
  const v1::JobSpec& spec = job.spec();
  const v1::JobProgress& p = job.progress();
  std::ostringstream md;
  md << "# " << spec.model_name() << "\n\n"
     << "Trained by spritediffd's Training service (job " << job.id() << "). Equivalent client command:\n\n"
     << "```sh\nspritectl train submit --name " << spec.model_name() << " --dataset " << spec.dataset()
     << " --image-size " << spec.image_size() << " --n-feat " << spec.n_feat() << " --epochs " << spec.epochs()
     << " --batch-size " << spec.batch_size() << " --lr " << spec.lr() << " --context-dropout "
     << spec.context_dropout() << " --ema-decay " << spec.ema_decay() << " --checkpoint-every "
     << spec.checkpoint_every() << " --seed " << spec.seed() << " --class-balance " << spec.class_balance()
     << (spec.no_flip() ? " --no-flip" : "") << (spec.base_model().empty() ? "" : " --base-model " + spec.base_model())
     << " --precision " << (spec.precision().empty() ? "fp32" : spec.precision())
     << "\n```\n\n"
     << "| | |\n|---|---|\n"
     << "| epochs | " << p.epoch() << " (" << p.step() << " optimizer steps of " << spec.batch_size() << " images) |\n"
     << "| final epoch loss | " << (job.epoch_losses_size() ? job.epoch_losses(job.epoch_losses_size() - 1) : 0.0)
     << " |\n"
     << "| training wall time | " << static_cast<int64_t>(std::round(p.elapsed_s())) << " s |\n"
     << "| resumed after daemon restarts (GetJob `resumes`) | " << job.resumes() << " |\n"
     << "| weights | " << (spec.ema_decay() > 0 ? "EMA" : "live") << " |\n";
  if (p.has_eval_accuracy()) {
    md << "| quality meter (" << spec.eval_per_class() << " per label, DDIM-25 eta 1 guidance 2) | class accuracy "
       << p.eval_accuracy() << ", Frechet ratio " << p.eval_frechet_ratio() << ", precision " << p.eval_precision()
       << ", recall " << p.eval_recall() << " (per class: `quality` in model.json) |\n";
  }
  md << "\n"
     << "![guided DDIM-25 samples, one row per label](samples.png)\n\n"
     << "Loss per epoch (mean MSE on the noise): `training-log.csv`.\n";
  return md.str();
}


Status PublishModel(const v1::Job& job, const std::string& job_dir, const std::string& models_dir,
                    ModelRegistry& registry) {
  const std::string name = job.spec().model_name();
  const fs::path staging = fs::path(job_dir) / "model";
  const fs::path target = fs::path(models_dir) / name;
  std::error_code ec;
  if (!fs::exists(staging / "model.json", ec)) {
    // A publish that completed just before a crash: the target is this job's model.
    Result<ModelInfo> published = ReadModelInfo(target.string());
    if (published.ok() &&
        published->provenance.value("command", "").find("Training.SubmitJob " + job.id() + " ") != std::string::npos) {
      // The card was written before the crash; this record has counted the restart since, so
      // the card is written again and says what GetJob says.
      Status card = WriteFileAtomic((target / "README.md").string(), ModelCard(job));
      if (!card.ok()) spdlog::warn("publishing {}: rewriting the model card: {}", name, card.message());
      return registry.Find(name) ? Status::Ok() : registry.Add(name, target.string());
    }
    return Status::FailedPrecondition("the trained model is missing from " + staging.string());
  }
  if (fs::exists(target, ec)) return Status::FailedPrecondition(target.string() + " appeared while the job ran");
  // A model that cannot be loaded never takes the name.
  Result<LoadedModel> loadable = LoadModel(staging.string());
  if (!loadable.ok()) return loadable.status();
  Status card = WriteFileAtomic((staging / "README.md").string(), ModelCard(job));
  if (!card.ok()) return card;
  fs::create_directories(models_dir, ec);
  ec.clear();
  fs::rename(staging, target, ec);
  if (ec == std::errc::cross_device_link) {
    // Separate volumes: copy next to the target (a dot-directory the registry skips), then rename.
    const fs::path tmp = fs::path(models_dir) / ("." + name + ".tmp-" + job.id());
    std::error_code cleanup;
    fs::remove_all(tmp, cleanup);
    ec.clear();
    fs::copy(staging, tmp, fs::copy_options::recursive, ec);
    if (!ec) fs::rename(tmp, target, ec);
    if (ec) {
      fs::remove_all(tmp, cleanup);
      return Status::Internal("publishing into " + target.string() + ": " + ec.message());
    }
    fs::remove_all(staging, cleanup);
  } else if (ec) {
    return Status::Internal("renaming " + staging.string() + " to " + target.string() + ": " + ec.message());
  }
  Status synced = SyncDirectory(models_dir);  // the rename is durable before the job says SUCCEEDED
  if (!synced.ok()) spdlog::warn("publishing {}: {}", name, synced.message());
  Status added = registry.Add(name, target.string());
  if (!added.ok()) {
    std::error_code undo;
    fs::rename(target, staging, undo);  // give the name back; the job can be inspected in its dir
  }
  return added;
}

}  // namespace spritediff
