#include "server/training_plan.h"

#include <cmath>
#include <filesystem>
#include <regex>

#include "common/client_text.h"
#include "core/dataset.h"
#include "core/runtime.h"
#include "server/model_registry.h"

namespace spritediff {

namespace fs = std::filesystem;

namespace {

Status Invalid(const std::string& message) { return Status::InvalidArgument(message); }

bool Under(const fs::path& path, const fs::path& root) {
  const fs::path rel = path.lexically_relative(root);
  return !rel.empty() && *rel.begin() != "..";
}

// Files of a dataset must be plain files and directories under root: a symlink inside the
// dataset must not lead outside it, and a FIFO or device would hang or flood the reader.
Status CheckDatasetTree(const fs::path& root, const fs::path& dataset, const std::string& name) {
  std::error_code ec;
  int seen = 0;
  for (auto it = fs::recursive_directory_iterator(dataset, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (++seen > 1000000) break;
    const fs::path& p = it->path();
    if (it->is_symlink(ec)) {
      const fs::path target = fs::weakly_canonical(p, ec);
      if (ec || !Under(target, root)) {
        return Status::PermissionDenied("dataset '" + Echo(name) + "': " + p.string() +
                                        " links outside the server's data root");
      }
    }
    const fs::file_status st = fs::status(p, ec);
    if (!ec && !fs::is_regular_file(st) && !fs::is_directory(st)) {
      return Status::FailedPrecondition("dataset '" + Echo(name) + "': " + p.string() +
                                        " is neither a file nor a directory");
    }
  }
  if (ec) return Status::FailedPrecondition("dataset '" + Echo(name) + "': " + ec.message());
  return Status::Ok();
}

}  // namespace

bool ValidModelName(const std::string& name) {
  static const std::regex re("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$");
  return std::regex_match(name, re) && name.find("..") == std::string::npos;
}

Result<std::string> ResolveDataset(const std::string& data_root, const std::string& dataset) {
  if (dataset.empty()) return Invalid("dataset is required: a folder under the server's data root");
  if (dataset.size() > kMaxPathBytes) {
    return Invalid("dataset must be at most " + std::to_string(kMaxPathBytes) + " bytes, got " +
                   std::to_string(dataset.size()));
  }
  if (dataset.find('\0') != std::string::npos) return Invalid("dataset contains a NUL character");
  std::error_code ec;
  const fs::path root = fs::weakly_canonical(fs::absolute(data_root), ec);
  if (ec || !fs::is_directory(root, ec)) {
    return Status::FailedPrecondition("the server's data root " + data_root + " is not a directory (config data_root)");
  }
  const fs::path path = fs::weakly_canonical(root / dataset, ec);
  if (ec) return Status::FailedPrecondition("dataset '" + Echo(dataset) + "': " + ec.message());
  if (!Under(path, root)) {
    return Status::PermissionDenied("dataset '" + Echo(dataset) + "' resolves outside the server's data root " +
                                    root.string());
  }
  return path.string();
}

Result<TrainingPlan> PlanTraining(const v1::JobSpec& spec_in, const TrainingLimits& limits,
                                  const ModelRegistry& registry) {
  TrainingPlan plan;
  v1::JobSpec* spec = &plan.spec;
  *spec = spec_in;
  if (!ValidModelName(spec->model_name())) {
    return Invalid("model_name '" + Echo(spec->model_name()) +
                   "' must be 1..64 characters from [A-Za-z0-9._-], start with a letter or digit, and not contain '..'");
  }
  std::shared_ptr<ServedModel> base;
  if (!spec->base_model().empty()) {
    base = registry.Find(spec->base_model());
    if (!base) return Status::NotFound("base_model '" + Echo(spec->base_model()) + "' is not served; see ListModels");
    if (spec->image_size() == 0) spec->set_image_size(static_cast<uint32_t>(base->info.arch.height));
    if (spec->n_feat() == 0) spec->set_n_feat(static_cast<uint32_t>(base->info.arch.n_feat));
    if (spec->channels() == 0) spec->set_channels(static_cast<uint32_t>(base->info.arch.in_channels));
  }
  // Every default is the trainer's own (core/trainer.h), except the seed: 0 in a spec means
  // "the default", which is 1 so that a job is reproducible.
  const TrainConfig d;
  // Unset fields (0, absent, empty) take the trainer's defaults; every range is the shared one
  // (common/training_rules.h), named by the JobSpec field.
  if (spec->image_size() == 0) spec->set_image_size(static_cast<uint32_t>(d.height));
  if (spec->n_feat() == 0) spec->set_n_feat(static_cast<uint32_t>(d.n_feat));
  if (spec->channels() == 0) spec->set_channels(static_cast<uint32_t>(d.channels));
  if (spec->epochs() == 0) spec->set_epochs(static_cast<uint32_t>(d.epochs));
  if (spec->batch_size() == 0) spec->set_batch_size(static_cast<uint32_t>(d.batch_size));
  if (!spec->has_lr()) spec->set_lr(static_cast<float>(d.lr));
  if (!spec->has_context_dropout()) spec->set_context_dropout(static_cast<float>(d.context_dropout));
  if (!spec->has_ema_decay()) spec->set_ema_decay(static_cast<float>(d.ema_decay));
  if (spec->checkpoint_every() == 0) spec->set_checkpoint_every(static_cast<uint32_t>(d.checkpoint_every));
  if (spec->seed() == 0) spec->set_seed(1);
  if (spec->class_balance().empty()) spec->set_class_balance(d.class_balance);
  using namespace training;  // NOLINT: the settings' table
  for (const Status& s : {CheckImageSize(spec->image_size(), "image_size"), CheckChannels(spec->channels(), "channels"),
                          kNFeat.Check(spec->n_feat(), kNFeat.name), kEpochs.Check(spec->epochs(), kEpochs.name),
                          kBatchSize.Check(spec->batch_size(), kBatchSize.name), kLr.Check(spec->lr(), kLr.name),
                          kContextDropout.Check(spec->context_dropout(), kContextDropout.name),
                          kEmaDecay.Check(spec->ema_decay(), kEmaDecay.name),
                          kCheckpointEvery.Check(spec->checkpoint_every(), kCheckpointEvery.name),
                          kEvalPerClass.Check(spec->eval_per_class(), kEvalPerClass.name),
                          CheckClassBalance(spec->class_balance(), "class_balance")}) {
    if (!s.ok()) return Invalid(s.message());
  }
  // Stored resolved ("auto" becomes what this server's device runs), so GetJob says what the job
  // runs with and a resume elsewhere keeps it.
  if (spec->precision().empty()) spec->set_precision(limits.training_precision);
  Result<bool> bf16 = ResolveBFloat16(spec->precision(), limits.device);  // names the field
  if (!bf16.ok()) return Invalid(bf16.status().message());
  spec->set_precision(*bf16 ? "bf16" : "fp32");
  ModelConfig arch;
  arch.n_feat = static_cast<int>(spec->n_feat());
  arch.height = static_cast<int>(spec->image_size());
  Status arch_ok = arch.Validate();
  if (!arch_ok.ok()) return Invalid("n_feat/image_size: " + arch_ok.message());
  if (static_cast<int64_t>(spec->n_feat()) * spec->image_size() > limits.max_n_feat_x_image_size) {
    return Status::ResourceExhausted("n_feat x image_size must be at most " +
                                     std::to_string(limits.max_n_feat_x_image_size) + " on this server, got " +
                                     std::to_string(spec->n_feat()) + " x " + std::to_string(spec->image_size()));
  }
  if (base && (base->info.arch.height != arch.height || base->info.arch.n_feat != arch.n_feat ||
               base->info.arch.in_channels != static_cast<int>(spec->channels()))) {
    return Invalid("base_model '" + base->name + "' has image_size " + std::to_string(base->info.arch.height) +
                   ", n_feat " + std::to_string(base->info.arch.n_feat) + " and channels " +
                   std::to_string(base->info.arch.in_channels) + "; a fine-tune keeps all three");
  }
  std::error_code ec;
  if (registry.Find(spec->model_name()) || fs::exists(fs::path(limits.models_dir) / spec->model_name(), ec)) {
    return Status::AlreadyExists("model_name '" + spec->model_name() + "' is taken by a model in " +
                                 limits.models_dir);
  }
  Result<std::string> path = ResolveDataset(limits.data_root, spec->dataset());
  if (!path.ok()) return path.status();
  // A stat costs nothing on the RPC thread, so a dataset that is not there is refused at once;
  // scanning and reading it stay on the worker (CheckDataset).
  ec.clear();
  const fs::file_status found = fs::status(*path, ec);
  if (!fs::exists(found)) {
    return Status::FailedPrecondition("dataset '" + Echo(spec->dataset()) + "' (" + *path +
                                      "): no such directory under the server's data root");
  }
  if (!fs::is_directory(found)) {
    return Status::FailedPrecondition("dataset '" + Echo(spec->dataset()) + "' (" + *path + "): not a directory");
  }
  plan.dataset_path = *path;
  return plan;
}

Status CheckDataset(const v1::JobSpec& spec, const std::string& dataset_path, const std::string& data_root,
                    size_t base_labels, int64_t max_epochs_x_images) {
  const std::string what = "dataset '" + Echo(spec.dataset()) + "' (" + dataset_path + ")";
  std::error_code ec;
  if (!fs::exists(dataset_path, ec)) return Status::FailedPrecondition(what + ": no such file or directory");
  if (!fs::is_directory(dataset_path, ec)) return Status::FailedPrecondition(what + ": not a directory");
  const fs::path root = fs::weakly_canonical(fs::absolute(data_root), ec);
  Status tree = CheckDatasetTree(root, dataset_path, spec.dataset());
  if (!tree.ok()) return tree;
  Result<Dataset> data = LoadDataset(dataset_path, static_cast<int>(spec.image_size()),
                                     spec.channels() == 0 ? 3 : static_cast<int>(spec.channels()));
  if (!data.ok()) return Status::FailedPrecondition(what + ": " + data.status().message());
  if (max_epochs_x_images > 0 && static_cast<int64_t>(spec.epochs()) * data->size() > max_epochs_x_images) {
    return Status::ResourceExhausted("epochs x dataset images must be at most " + std::to_string(max_epochs_x_images) +
                                     " on this server, got " + std::to_string(spec.epochs()) + " x " +
                                     std::to_string(data->size()) + " (" + what + ")");
  }
  if (data->size() < spec.batch_size()) {
    return Status::InvalidArgument("batch_size " + std::to_string(spec.batch_size()) + " exceeds the " + what +
                                   "'s " + std::to_string(data->size()) + " images");
  }
  if (base_labels != 0 && base_labels != data->labels.size()) {
    return Status::FailedPrecondition("base_model '" + spec.base_model() + "' has " + std::to_string(base_labels) +
                                      " labels, the " + what + " " + std::to_string(data->labels.size()));
  }
  return Status::Ok();
}

TrainConfig TrainConfigFor(const v1::JobSpec& spec, const std::string& job_dir, const std::string& device) {
  const fs::path dir(job_dir);
  TrainConfig tc;
  tc.out = (dir / "model").string();
  tc.state_path = (dir / "train-state.pt").string();
  tc.name = spec.model_name();
  tc.height = static_cast<int>(spec.image_size());
  tc.n_feat = static_cast<int>(spec.n_feat());
  tc.channels = spec.channels() == 0 ? 3 : static_cast<int>(spec.channels());
  tc.epochs = static_cast<int>(spec.epochs());
  tc.batch_size = static_cast<int>(spec.batch_size());
  tc.lr = spec.lr();
  tc.context_dropout = spec.context_dropout();
  tc.ema_decay = spec.ema_decay();
  tc.flip = !spec.no_flip();
  tc.class_balance = spec.class_balance();
  tc.checkpoint_every = static_cast<int>(spec.checkpoint_every());
  tc.seed = spec.seed();
  tc.device = device;
  // Empty in the specs of jobs submitted before the field existed: those keep float32.
  const Result<bool> bf16 = ResolveBFloat16(spec.precision(), device);
  tc.bf16_convolutions = bf16.ok() && bf16.value();
  tc.log_every = 10;
  tc.eval.per_class = static_cast<int>(spec.eval_per_class());
  // job_dir is <state_dir>/jobs/<id>: the meter's classifier is cached once per daemon state.
  tc.eval.cache_dir = (dir.parent_path().parent_path() / "eval-cache").string();
  return tc;
}

}  // namespace spritediff
