// Publishing a trained model: the job's staging directory becomes models_dir/<name> by one
// rename (a copy next to it then a rename across volumes), with a generated model card, and is
// hot-added to the registry. A model that cannot be loaded never takes the name.
#pragma once

#include <string>

#include "common/status.h"
#include "spritediff/v1/training.pb.h"

namespace spritediff {

class ModelRegistry;

// README.md for a model trained through the endpoint: how it was made and how it learned.
std::string ModelCard(const v1::Job& job);

// Moves <job_dir>/model to <models_dir>/<spec.model_name> and serves it. Idempotent after a
// crash between the rename and the record: a target that this job made is served as is.
Status PublishModel(const v1::Job& job, const std::string& job_dir, const std::string& models_dir,
                    ModelRegistry& registry);

}  // namespace spritediff
