#include "common/config.h"

#include <fstream>
#include <nlohmann/json.hpp>

namespace spritediff {

using nlohmann::json;

Status AppConfig::Validate() const {
  auto range = [](const char* name, int v, int lo, int hi) -> Status {
    if (v < lo || v > hi) {
      return Status::InvalidArgument(std::string(name) + " must be in [" + std::to_string(lo) + ", " +
                                     std::to_string(hi) + "], got " + std::to_string(v));
    }
    return Status::Ok();
  };
  for (const Status& s : {range("port", port, 0, 65535), range("metrics_port", metrics_port, 0, 65535), range("threads", threads, 0, 1024),
                          range("max_batch_rows", max_batch_rows, 1, 4096),
                          range("max_queued_rows", max_queued_rows, 1, 1 << 20),
                          range("max_rows_per_request", max_rows_per_request, 1, 4096),
                          range("max_frames_per_request", max_frames_per_request, 1, 100000),
                          range("max_pending_frames", max_pending_frames, 1, 1024),
                          range("shutdown_grace_s", shutdown_grace_s, 0, 3600),
                          range("max_concurrent_jobs", max_concurrent_jobs, 0, 64),
                          range("training_threads", training_threads, 1, 1024)}) {
    if (!s.ok()) return s;
  }
  if (max_rows_per_request > max_queued_rows) {
    return Status::InvalidArgument("max_rows_per_request (" + std::to_string(max_rows_per_request) +
                                   ") must not exceed max_queued_rows (" + std::to_string(max_queued_rows) +
                                   "): such a request could never be queued");
  }
  if (max_rows_per_request > max_batch_rows) {
    return Status::InvalidArgument("max_rows_per_request (" + std::to_string(max_rows_per_request) +
                                   ") must not exceed max_batch_rows (" + std::to_string(max_batch_rows) +
                                   "): a request's rows are stepped in one batch");
  }
  if (bind.empty()) return Status::InvalidArgument("bind must not be empty");
  if (models_dir.empty()) return Status::InvalidArgument("models_dir must not be empty");
  if (data_root.empty()) return Status::InvalidArgument("data_root must not be empty");
  if (state_dir.empty()) return Status::InvalidArgument("state_dir must not be empty");
  return Status::Ok();
}

Result<AppConfig> LoadConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound(path + ": cannot open config file");
  AppConfig c;
  try {
    const json j = json::parse(in);
    if (!j.is_object()) return Status::InvalidArgument(path + ": config must be a JSON object");
    static const char* known[] = {"bind", "port", "metrics_port", "models_dir", "default_model", "device", "threads",
                                  "max_batch_rows", "max_queued_rows", "max_rows_per_request",
                                  "max_frames_per_request", "max_pending_frames", "shutdown_grace_s", "data_root",
                                  "state_dir", "max_concurrent_jobs", "training_threads",
                                  "resume_interrupted_jobs", "comment"};
    for (const auto& item : j.items()) {
      if (std::find(std::begin(known), std::end(known), item.key()) == std::end(known)) {
        return Status::InvalidArgument(path + ": unknown key '" + item.key() + "'");
      }
    }
    c.bind = j.value("bind", c.bind);
    c.port = j.value("port", c.port);
    c.metrics_port = j.value("metrics_port", c.metrics_port);
    c.models_dir = j.value("models_dir", c.models_dir);
    c.default_model = j.value("default_model", c.default_model);
    c.device = j.value("device", c.device);
    c.threads = j.value("threads", c.threads);
    c.max_batch_rows = j.value("max_batch_rows", c.max_batch_rows);
    c.max_queued_rows = j.value("max_queued_rows", c.max_queued_rows);
    c.max_rows_per_request = j.value("max_rows_per_request", c.max_rows_per_request);
    c.max_frames_per_request = j.value("max_frames_per_request", c.max_frames_per_request);
    c.max_pending_frames = j.value("max_pending_frames", c.max_pending_frames);
    c.shutdown_grace_s = j.value("shutdown_grace_s", c.shutdown_grace_s);
    c.data_root = j.value("data_root", c.data_root);
    c.state_dir = j.value("state_dir", c.state_dir);
    c.max_concurrent_jobs = j.value("max_concurrent_jobs", c.max_concurrent_jobs);
    c.training_threads = j.value("training_threads", c.training_threads);
    c.resume_interrupted_jobs = j.value("resume_interrupted_jobs", c.resume_interrupted_jobs);
  } catch (const json::exception& e) {
    return Status::InvalidArgument(path + ": " + e.what());
  }
  Status s = c.Validate();
  if (!s.ok()) return Status::InvalidArgument(path + ": " + s.message());
  return c;
}

}  // namespace spritediff
