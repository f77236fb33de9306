// A training job's plan: the JobSpec checked field by field, its defaults filled in from the
// trainer's own TrainConfig (one place for each default), and its dataset resolved under the
// data root. Planning is cheap (no directory scan, no image read) so that SubmitJob can answer
// on a gRPC thread; the dataset itself is checked and read on the training worker
// (CheckDataset), where a bad one becomes a FAILED job with the path and the reason.
#pragma once

#include <cstddef>
#include <string>

#include "common/status.h"
#include "core/trainer.h"
#include "spritediff/v1/training.pb.h"

namespace spritediff {

class ModelRegistry;

struct TrainingLimits {
  std::string data_root;
  std::string state_dir;
  std::string models_dir;
  std::string device = "cpu";
  int max_concurrent_jobs = 1;
  int threads = 1;  // intra-op threads per job
  bool resume_interrupted = true;
  int max_queued_jobs = 16;  // unfinished jobs (queued + running) at once; past it RESOURCE_EXHAUSTED
  int64_t max_n_feat_x_image_size = 4096;  // model width x sprite side (compute and weights size)
  int64_t max_epochs_x_images = 20000000;  // images a job may train on in total
  int finished_job_retention_h = 168;      // finished job dirs older than this go at start (0 = keep)
  std::string training_precision = "fp32";  // a spec's precision when it names none
};

struct TrainingPlan {
  v1::JobSpec spec;          // every default filled in
  std::string dataset_path;  // canonical, under the data root
};

// Model names become directory names: a safe set, no separators, no "..".
bool ValidModelName(const std::string& name);

// The dataset folder, resolved (symlinks included) and confined to data_root:
// PERMISSION_DENIED when it leaves the root, INVALID_ARGUMENT when empty.
Result<std::string> ResolveDataset(const std::string& data_root, const std::string& dataset);

// Validates spec against the limits and the served models and fills in its defaults. Cheap:
// the dataset path is resolved and confined, not read.
Result<TrainingPlan> PlanTraining(const v1::JobSpec& spec, const TrainingLimits& limits,
                                  const ModelRegistry& registry);

// On the worker, before training: the dataset tree holds only files and directories under
// data_root, it reads, it has at least batch_size images and (for a fine-tune) the base model's
// label count, and epochs x images stays within max_epochs_x_images (0 = no bound). Errors name
// the dataset, its path and the reason.
Status CheckDataset(const v1::JobSpec& spec, const std::string& dataset_path, const std::string& data_root,
                    size_t base_labels, int64_t max_epochs_x_images = 0);

// The trainer's config for a planned job: out and state under job_dir, the spec's fields.
TrainConfig TrainConfigFor(const v1::JobSpec& spec, const std::string& job_dir, const std::string& device);

}  // namespace spritediff
